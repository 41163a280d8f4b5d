"""Where code lives and which way imports go: a family = its package's FAMILY object + model.py + interop.py, and
the layers data -> models -> tasks -> run -> tools -> entry points import one way, with no circle between modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dnabert"
ENTRY_POINTS = ("train", "finetune", "suite")
# Lower number = lower layer; a module may import its own layer or a lower one. `dnabert` itself (errors) is the base.
LAYERS = {"dnabert": 0, "dnabert.data": 1, "dnabert.models": 2, "dnabert.tasks": 3, "dnabert.run": 4,
          "dnabert.tools": 5}
ENTRY_LAYER = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules_of(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules one import statement names; ``from package import module`` names the module itself."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not node.module or node.level:
        return set()
    return {node.module} | {f"{node.module}.{alias.name}" for alias in node.names
                            if f"{node.module}.{alias.name}" in MODULES}


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` names in the file, at any depth (lazy imports and
    TYPE_CHECKING ones included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= imported_modules_of(node)
    return names


def layer_of(module: str) -> int:
    """A module's layer: its longest listed prefix."""
    prefixes = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(prefixes, key=len)]


def dnabert_edges() -> dict[str, set[str]]:
    """module -> the dnabert modules it imports (entry points included, as their script names); a package's
    `from package import submodule` is an edge to the submodule only."""
    sources = {**MODULES, **{name: ROOT / f"{name}.py" for name in ENTRY_POINTS}}
    return {module: {name for name in imported_modules(path) if (name in MODULES or name in ENTRY_POINTS)
                     and name != module}
            for module, path in sources.items()}


def test_every_import_goes_down_the_layers():
    edges = dnabert_edges()
    upward = sorted(
        f"{module} (layer {layer_of(module) if module in MODULES else ENTRY_LAYER}) imports {name}"
        for module, names in edges.items() for name in names
        if name in ENTRY_POINTS
        or (module in MODULES and layer_of(name) > layer_of(module))
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    edges = dnabert_edges()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for name in sorted(edges.get(module, ())):
            if state.get(name) == 1:
                cycles.append(" -> ".join(path[path.index(name):] + [name]))
            elif name not in state:
                visit(name)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def reachable_from(module: str, edges: dict[str, set[str]]) -> set[str]:
    """Every module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for name in edges.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_tokenizers_sit_below_the_data_module():
    """The data module's stream tokenises with them, so no tokenizer may import the stream, at any distance
    (training a BPE tokenizer on the stream lives above it: dnabert.data.bpe_training)."""
    edges = dnabert_edges()
    tokenizers = [module for module in MODULES if module.startswith("dnabert.data.tokenizers")]
    assert "dnabert.data.tokenizers.bpe" in tokenizers
    upward = {module: sorted(reachable_from(module, edges) & {"dnabert.data.datamodule", "dnabert.data.bpe_training"})
              for module in tokenizers}
    assert not any(upward.values()), upward


@pytest.mark.parametrize("source, problem", [
    ("from dnabert.run.training import run\n", "imports dnabert.run.training"),
    ("def late():\n    from dnabert.tools import export\n", "imports dnabert.tools.export"),
])
def test_the_layer_check_sees_lazy_and_module_imports(tmp_path, source, problem):
    """The checks themselves: an upward import inside a function, or of a module by `from package import`."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    names = imported_modules(probe)
    assert any(layer_of(name) > LAYERS["dnabert.models"] for name in names if name in MODULES), (problem, names)


def test_every_import_inside_a_function_says_why():
    """A dnabert import inside a function (deferred to save start-up time) has a comment on its line or the line
    above that says what it saves."""
    silent = []
    for path in [*MODULES.values(), *(ROOT / f"{name}.py" for name in ENTRY_POINTS)]:
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            imports = [node for node in ast.walk(function) if isinstance(node, ast.Import | ast.ImportFrom)
                       and any(name.startswith("dnabert") for name in imported_modules_of(node))]
            silent += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in imports
                       if "#" not in lines[node.lineno - 1] and not lines[node.lineno - 2].strip().startswith("#")]
    assert not silent, "\n".join(silent)


def test_entry_points_share_their_helpers_through_the_package():
    for name in ENTRY_POINTS:
        imported = imported_modules(ROOT / f"{name}.py")
        assert not imported & set(ENTRY_POINTS), f"{name}.py imports another entry point"
        assert "dnabert.tools.cli" in imported


def test_outside_models_no_code_names_a_family():
    """Family names (compared, or DNABERT-2's anywhere) and family modules appear only under dnabert/models/
    (docstrings and comments aside)."""
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("dnabert.models"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        compared = {id(operand) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                    for operand in (node.left, *node.comparators)}
        for node in ast.walk(tree):  # "dnabert" is also the logger's name: a family only where it is compared
            if (isinstance(node, ast.Constant) and id(node) not in docstrings
                    and (node.value == "dnabert2" or (node.value == "dnabert" and id(node) in compared))):
                offenders.append(f"{module}:{node.lineno} {node.value!r}")
        offenders += [f"{module} imports {name}" for name in imported_modules(path)
                      if name.startswith(("dnabert.models.dnabert.", "dnabert.models.dnabert2."))
                      or name in ("dnabert.models.dnabert", "dnabert.models.dnabert2")]
    assert not offenders, "\n".join(offenders)


def test_each_family_has_its_interop_beside_its_model():
    from dnabert.models import FAMILIES

    built_in = {name: family for name, family in FAMILIES.items() if type(family).__module__.startswith("dnabert.")}
    assert len(built_in) >= 2  # families registered by other tests (tests.third_family) live outside the package
    for name, family in built_in.items():
        folder = ROOT / Path(*type(family).__module__.split("."))
        assert (folder / "model.py").is_file() and (folder / "interop.py").is_file(), f"family {name}"


def test_importing_training_loads_no_exporter():
    """train.py's import stays light: a family's interop (transformers' BERT classes, safetensors I/O) and the export
    CLI are imported when a run needs them (model.init_from, the end-of-run export), and never the other family."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, dnabert.run.training; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.split()
    unwanted = {"dnabert.tools.export", "dnabert.models.interop", "dnabert.models.dnabert.interop",
                "dnabert.models.dnabert2.interop", "dnabert.models.dnabert2.model"}
    assert not unwanted & set(loaded)
