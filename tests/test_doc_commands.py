"""Every command in a fenced block of README.md, docs/ and slurm/README.md still works with the current configs.

A renamed setting, config group or option, or a removed command-line flag, would leave the documentation
telling users to type something that fails. Each command is checked without running anything:

- `python train.py ...` / `python finetune.py ...`: the overrides are composed with Hydra's compose API against
  `configs/` (the config dir copied to a temporary folder with the config files the docs themselves define, e.g.
  `configs/data/my_species.yaml`), so an unknown key, group or option fails. Hydra's own flags (`--cfg job`,
  `--resolve`, `-m`) are dropped, each value of a multirun sweep is composed once; interpolations are not
  resolved and no file is read, so placeholder paths pass.
- `sbatch slurm/<script>.sbatch ...`: the sbatch script's own `train.py` overrides (its `${VAR:-default}` with the
  command's `VAR=` prefix or the default, SLURM's variables as 1) plus the command's trailing overrides, as above.
- `python -m <module> ...`, `python data/fetch_genome.py ...` and the console scripts of pyproject.toml: the
  module's `main(argv)` runs until its argparse parser has parsed the arguments, then stops, so an unknown flag,
  subcommand or a missing argument fails (argparse's exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import re
import shlex
import shutil
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import RangeSweep

ROOT = Path(__file__).resolve().parents[1]
# The user guide and the front page; slurm/README.md documents the sbatch scripts with commands of the same kinds.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "slurm" / "README.md"]
FENCE = re.compile(r"^(\s*)(```+|~~~+)")
# A fenced YAML block whose first line is `# configs/<group>/<name>.yaml` defines a config the docs' commands use.
DEFINED_CONFIG = re.compile(r"^#\s*(configs/[\w/]+\.yaml)\s*$")
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
HYDRA_FLAGS = {"--resolve", "-m", "--multirun"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {"<", ">", ">>", "2>"}
CONFIG_NAMES = {"train.py": "train", "finetune.py": "finetune", "suite.py": "suite"}


@dataclass(frozen=True)
class DocCommand:
    """One shell command of a fenced block: where it is, and its words (continuations joined, comments dropped)."""

    source: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {' '.join(self.words)}"


def fenced_blocks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of each fenced code block, indented fences (inside list items) included."""
    lines = path.read_text().splitlines()
    start, body, fence = 0, [], ""
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if not fence and match:
            start, body, fence = number + 1, [], match.group(2)
        elif fence and match and match.group(2).startswith(fence) and not line.strip()[len(fence):]:
            yield start, body
            fence = ""
        elif fence:
            body.append(line)


def shell_commands(path: Path) -> Iterator[DocCommand]:
    """The simple commands of every fenced block: `\\` continuations joined, split at `&&`, `;`, `&` and pipes."""
    source = str(path.relative_to(ROOT))
    for start, body in fenced_blocks(path):
        index = 0
        while index < len(body):
            line_number, text = start + index, body[index]
            while text.rstrip().endswith("\\") and index + 1 < len(body):
                index += 1
                text = text.rstrip()[:-1] + " " + body[index]
            index += 1
            try:
                lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
                lexer.whitespace_split = True
                words = list(lexer)
            except ValueError:  # not shell (a YAML or output block)
                continue
            command: list[str] = []
            for word in [*words, ";"]:
                if word in SHELL_SEPARATORS:
                    if command:
                        yield DocCommand(source, line_number, tuple(command))
                    command = []
                else:
                    command.append(word)


def defined_configs() -> dict[str, str]:
    """configs/<group>/<name>.yaml -> text, for each config file the docs spell out in a fenced block."""
    defined = {}
    for path in DOCS:
        for _, body in fenced_blocks(path):
            match = DEFINED_CONFIG.match(body[0].strip()) if body else None
            if match:
                defined[match.group(1)] = textwrap.dedent("\n".join(body)) + "\n"
    return defined


def without_redirections(words: list[str]) -> list[str]:
    """The arguments a program sees: shell redirections (`< in.txt > out.txt`) and their files removed."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in REDIRECTIONS:
            skip = True
        else:
            kept.append(word)
    return kept


def hydra_overrides(command: DocCommand, words: list[str]) -> list[str]:
    """train.py/finetune.py arguments without Hydra's own flags; any other flag is an error in the docs."""
    overrides, skip = [], False
    for word in without_redirections(words):
        if skip:
            skip = False
        elif word in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif word in HYDRA_FLAGS:
            continue
        elif word.startswith("-"):
            pytest.fail(f"{command}\n  {word!r} is not a Hydra override or flag")
        else:
            overrides.append(word)
    return overrides


def sbatch_overrides(command: DocCommand, script: str, env: dict[str, str]) -> list[str]:
    """The overrides an sbatch script passes to train.py itself, with the command's `VAR=value` prefixes."""
    text = (ROOT / script).read_text().replace("\\\n", " ")
    calls = [line for line in text.splitlines() if line.startswith("srun ") and " train.py " in line]
    assert len(calls) == 1, f"{command}\n  {script}: expected one train.py line, found {len(calls)}"

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1) or match.group(3), match.group(2)
        return env.get(name, variables.sub(expand, default) if default is not None else "1")

    variables = re.compile(r"\$\{(\w+):-([^}]*)\}|\$(\w+)")
    line = variables.sub(expand, calls[0].split(" train.py ", 1)[1].replace('"$@"', ""))
    return shlex.split(line)


def program_main(command: DocCommand, words: list[str]) -> tuple[Callable[[list[str]], object], list[str]] | None:
    """(main, argv) of an argparse command: `python -m module`, a script of data/, or a console script."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if words[0] in scripts:
        module, function = scripts[words[0]].split(":")
        return getattr(importlib.import_module(module), function), words[1:]
    if words[0] not in {"python", "python3"} or len(words) < 2:
        return None
    if words[1] == "-m":
        module = words[2]
        assert importlib.util.find_spec(module) is not None, f"{command}\n  no module {module}"
        loaded = importlib.import_module(module)
        assert hasattr(loaded, "main"), f"{command}\n  {module} has no main(argv)"
        return loaded.main, words[3:]
    script = ROOT / words[1]
    if words[1].endswith(".py") and words[1] not in CONFIG_NAMES:
        assert script.is_file(), f"{command}\n  no file {words[1]}"
        return load_script(script).main, words[2:]
    return None


def load_script(script: Path) -> ModuleType:
    """A script of the repository as a module, loaded once (registered: dataclasses look their module up)."""
    if script.stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(script.stem, script)
        sys.modules[script.stem] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[script.stem])
    return sys.modules[script.stem]


class _ArgumentsParsed(Exception):
    """Raised once the program's parser has accepted the arguments: nothing after parsing runs."""


def assert_arguments_parse(command: DocCommand, main: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run `main(argv)` only up to its `parse_args`; argparse's exit (unknown flag, missing argument) fails."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser: argparse.ArgumentParser, args: list[str] | None = None,
                        namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        original(parser, args, namespace)
        raise _ArgumentsParsed

    stderr = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), redirect_stderr(stderr):
        try:
            main(argv)
        except _ArgumentsParsed:
            return
        except SystemExit as exit_:
            pytest.fail(f"{command}\n  the arguments do not parse (exit {exit_.code}): {stderr.getvalue().strip()}")
    pytest.fail(f"{command}\n  main() returned without parsing its arguments with argparse")


def classify(command: DocCommand) -> tuple[str, object]:
    """What to check for one command: ("compose", (config name, overrides)), ("argparse", (main, argv)), or skip."""
    words = list(command.words)
    env = {}
    while words and re.fullmatch(r"\w+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if not words:
        return "skip", None
    if words[0] == "srun":  # srun's own flags, then the program
        words = words[next(i for i, word in enumerate(words) if word in {"python", "python3"}):]
    if words[0] in {"python", "python3"} and len(words) > 1 and words[1] in CONFIG_NAMES:
        return "compose", (CONFIG_NAMES[words[1]], hydra_overrides(command, words[2:]))
    if words[0] == "sbatch":  # sbatch's own flags, then the script and its arguments
        words = words[next((i for i, word in enumerate(words[1:], 1) if not word.startswith("-")), len(words)):]
        assert words and words[0].startswith("slurm/"), f"{command}\n  no sbatch script of slurm/"
        overrides = sbatch_overrides(command, words[0], env) + hydra_overrides(command, words[1:])
        return "compose", ("train", overrides)
    program = program_main(command, without_redirections(words))
    return ("argparse", program) if program else ("skip", None)


def is_checked(command: DocCommand) -> bool:
    """Whether a command runs one of the project's programs (the rest, `pip install` and such, is not checked)."""
    words = list(command.words)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # environment assignments before the program
        words.pop(0)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    programs = {"python", "python3", "sbatch", "srun", *scripts}
    if not words or words[0] not in programs:
        return False
    if words[0] in {"python", "python3"}:  # a script, or one of the project's modules (not `-m venv`)
        return len(words) > 1 and (words[1] != "-m" or words[2].split(".")[0] == "dnabert")
    return True


DOC_COMMANDS = [command for path in DOCS for command in shell_commands(path)]
CHECKED = [command for command in DOC_COMMANDS if is_checked(command)]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/ plus the config files the docs define (a user's `configs/data/my_species.yaml`)."""
    configs = tmp_path_factory.mktemp("doc_configs") / "configs"
    shutil.copytree(ROOT / "configs", configs)
    for relative, text in defined_configs().items():
        target = configs.parent / relative
        assert not (ROOT / relative).exists(), f"the docs' example {relative} would shadow a bundled config"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return configs


def single_runs(overrides: list[str]) -> list[list[str]]:
    """A multirun's sweeps (`optim.lr=2e-4,4e-4`) as single runs: each swept value once, other sweeps at their first;
    a range (`pair=range(0,140,4)`, numbers of one kind) at its first and last value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {index: list(override.sweep_string_iterator())
              for index, override in enumerate(parsed) if override.is_sweep_override()}
    values = {index: swept[:1] + swept[1:][-1:] if isinstance(parsed[index].value(), RangeSweep) else swept
              for index, swept in values.items()}
    if not values:
        return [overrides]
    first = {index: f"{parsed[index].get_key_element()}={swept[0]}" for index, swept in values.items()}
    runs = []
    for index, swept in values.items():
        for value in swept:
            run = [first.get(position, override) for position, override in enumerate(overrides)]
            run[index] = f"{parsed[index].get_key_element()}={value}"
            runs.append(run)
    return runs


def compose_overrides(config_dir: Path, config_name: str, overrides: list[str]) -> None:
    """Compose like the entry point does, without running it; raises on an unknown key, group or option."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        for run in single_runs(overrides):
            compose(config_name=config_name, overrides=run)


def test_the_docs_have_commands_of_each_kind() -> None:
    """The extraction finds the documented commands: a regression here would silently check nothing."""
    kinds = [classify(command)[0] for command in CHECKED]
    assert set(kinds) == {"compose", "argparse"}
    programs = {command.words[1] for command in CHECKED if command.words[0] in {"python", "python3"}}
    assert {"train.py", "finetune.py", "-m", "data/fetch_genome.py"} <= programs
    assert any(command.words[0] == "sbatch" for command in CHECKED)
    assert "configs/data/my_species.yaml" in defined_configs()


@pytest.mark.parametrize("command", CHECKED, ids=lambda command: f"{command.source}:{command.line}")
def test_documented_command_parses(command: DocCommand, config_dir: Path) -> None:
    """One documented command: its overrides compose, or its arguments parse."""
    kind, what = classify(command)
    assert kind != "skip", f"{command}\n  runs no train.py, finetune.py, sbatch script or argparse program"
    if kind == "compose":
        config_name, overrides = what
        try:
            compose_overrides(config_dir, config_name, overrides)
        except Exception as error:  # noqa: BLE001 - Hydra raises several kinds; the message is what matters
            pytest.fail(f"{command}\n  does not compose with configs/{config_name}.yaml: {error}")
    else:
        main, argv = what
        assert_arguments_parse(command, main, argv)


def test_an_unknown_setting_fails(config_dir: Path) -> None:
    """The check can fail: a key, a group option and a flag that do not exist are each refused."""
    for overrides in (["no_such_setting=1"], ["model=no_such_model"], ["data.no_such_key=2"],
                      ["optim.lr=2e-4,4e-4", "masking=whole_kmer,no_such_masking"]):
        with pytest.raises(Exception, match="no_such"):
            compose_overrides(config_dir, "train", overrides)
    command = DocCommand("test", 0, ("python", "-m", "dnabert.tools.export", "--no-such-flag", "a", "b"))
    with pytest.raises(pytest.fail.Exception, match="do not parse"):
        assert_arguments_parse(command, *program_main(command, list(command.words)))
