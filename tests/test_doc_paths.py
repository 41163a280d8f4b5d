"""Every file a document names exists: the docs, the configs' comments and the docstrings and comments of the
package, benchmarks and tests name repository paths (`dnabert/run/history.py`, `docs/architecture.md`) and file
names (`report.md`); a rename or a removal that leaves them behind fails here, with the place that names it."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

from tests.conftest import ROOT

DOCS = ("README.md", "BENCHMARKS.md", "docs/*.md", "benchmarks/README.md", "data/README.md", "slurm/README.md")
TOP_FOLDERS = ("dnabert", "configs", "benchmarks", "tests", "docs", "slurm", "data")
# A path inside the repository: a top folder, then path characters (globs allowed), not part of a URL or of an
# absolute path (`/data/GRCh38.fa` is a user's file).
REPO_PATH = re.compile(rf"(?<![\w./<>-])((?:{'|'.join(TOP_FOLDERS)})/[\w./*-]*[\w*/])")
# A bare file name (`report.md`, `finetune.py`): some file of the repository must have that name.
FILE_NAME = re.compile(r"(?<![\w./<>-])([\w*-]+\.(?:py|md|yaml|sh|tsv))\b(?![\w/-])")
# Named on purpose although they are not in the repository.
ALLOWED = {
    "report.md", "overrides.yaml", "summary.md",  # written by a run (or by benchmarks/gpu_session.sh)
    "results.md", "compare.md",  # written by suite.py / dnabert.tools.suite_summary and suite_compare
    "variants.tsv",  # written by dnabert.tools.score_variants (the README's example)
    "train.tsv", "dev.tsv", "test.tsv", "my_task.tsv", "configs/data/my_species.yaml",  # users' files
}


def repository_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [name for name in listed if (ROOT / name).exists()]


def python_prose(source: str) -> str:
    """The comments and docstrings of a module: the prose in it, not its code or data strings."""
    parts = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def yaml_comments(path: Path) -> str:
    return "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


def prose_by_file() -> dict[str, str]:
    texts = {}
    for pattern in DOCS:
        for path in sorted(ROOT.glob(pattern)):
            texts[str(path.relative_to(ROOT))] = path.read_text()
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        texts[str(path.relative_to(ROOT))] = yaml_comments(path)
    for folder in ("dnabert", "benchmarks", "data", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            texts[str(path.relative_to(ROOT))] = python_prose(path.read_text())
    return texts


def missing_paths(text: str, files: list[str]) -> list[str]:
    names = {Path(name).name for name in files}
    folders = {str(parent) for name in files for parent in Path(name).parents}
    missing = []
    for path in REPO_PATH.findall(text):
        path = path.rstrip(".").rstrip("/")
        if path in ALLOWED or path in folders or any(Path(name).match(path) for name in files if "*" in path):
            continue
        if path not in files:
            missing.append(path)
    for name in FILE_NAME.findall(text):
        if name not in ALLOWED and name not in names and not any(Path(n).match(name) for n in names if "*" in name):
            missing.append(name)
    return missing


def test_every_path_a_document_names_exists() -> None:
    files = repository_files()
    stale = {where: found for where, text in prose_by_file().items() if (found := missing_paths(text, files))}
    assert not stale, f"documents name files that do not exist (fix the reference or remove it): {stale}"


def test_the_scan_finds_a_stale_path() -> None:
    """The checker itself: stale references are found, real ones and a user's absolute paths are not."""
    files = ["dnabert/run/history.py", "configs/logger/wandb.yaml", "README.md"]
    text = ("See dnabert/run/history.py, configs/logger/*.yaml and README.md; dnabert/model.py and recipe.md are "
            "gone; /data/GRCh38.fa and https://example.org/docs/x.md are not ours; report.md is written by a run.")
    assert missing_paths(text, files) == ["dnabert/model.py", "recipe.md"]
    assert "dnabert/model.py" in python_prose("# the model lives in dnabert/model.py\nx = 'dnabert/no.py'\n")
    assert "dnabert/no.py" not in python_prose("x = 'dnabert/no.py'\n")

