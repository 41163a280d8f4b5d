"""Where export/import code lives: a family = model.py + interop.py, and the import direction stays one way."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dnabert"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` names in the file, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_models_and_data_never_import_run_tasks_or_tools():
    offenders = {
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for layer in ("models", "data")
        for path in (PACKAGE / layer).rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(("dnabert.run", "dnabert.tools", "dnabert.tasks"))
    }
    assert not offenders


def test_each_family_has_its_interop_beside_its_model():
    from dnabert.models import FAMILIES

    for family, (model_module, _, _) in FAMILIES.items():
        folder = PACKAGE.parent / Path(*model_module.split(".")[:-1])
        assert (folder / "interop.py").is_file(), f"family {family} has no interop.py beside its model.py"


def test_importing_training_loads_no_exporter():
    """train.py's import stays light: a family's interop (transformers' BERT classes, safetensors I/O) and the export
    CLI are imported when a run needs them (model.init_from, the end-of-run export), and never the other family."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, dnabert.run.training; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=PACKAGE.parent,
    ).stdout.split()
    unwanted = {"dnabert.tools.export", "dnabert.models.interop", "dnabert.models.dnabert.interop",
                "dnabert.models.dnabert2.interop", "dnabert.models.dnabert2.model"}
    assert not unwanted & set(loaded)
