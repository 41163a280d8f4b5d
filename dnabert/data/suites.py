"""Benchmark suites as their authors distribute them, turned into the tables fine-tuning reads.

Three layouts, each as downloaded (docs/guide/benchmark-suites.md), and `files` (one labelled file per dataset,
dev and test cut from it):
- `gue` (DNABERT-2's GUE): `<dataset>/{train,dev,test}.csv`, header `sequence,label`; read as they are.
- `genomic_benchmarks`: `<dataset>/{train,test}/<class>/<id>.txt`, one sequence per file, the folder name is the
  class (what genomic_benchmarks' `download_dataset` writes).
- `nt` (the Nucleotide Transformer downstream tasks): `<task>/{train,test}.fna`, FASTA whose header ends in
  `|<label>` (how InstaDeepAI/nucleotide_transformer_downstream_tasks' loading script reads the label).

The last two become `<cache>/<dataset>/{train,test}.csv` once (written to a temporary name and renamed, so jobs
of the same dataset running at once never read a half-written file).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from dnabert.errors import DnabertError

LAYOUTS = ("gue", "genomic_benchmarks", "nt", "files")
SPLITS = ("train", "dev", "test")


def dataset_files(layout: str, dataset_dir: Path, cache_dir: Path) -> dict[str, Path]:
    """The split files of one dataset: train, and dev and test where the suite ships them."""
    if layout == "files":
        if not dataset_dir.is_file():
            raise DnabertError(f"{dataset_dir} is missing; a `files` suite names one labelled file per dataset.")
        return {"train": dataset_dir}
    if not dataset_dir.is_dir():
        raise DnabertError(f"{dataset_dir} is missing; fetch the suite (python -m dnabert.tools.fetch_suite) and "
                           "point suite.data_dir at the folder it wrote.")
    if layout == "gue":
        files = {split: dataset_dir / f"{split}.csv" for split in SPLITS}
    elif layout == "genomic_benchmarks":
        files = {split: _cached(cache_dir / f"{split}.csv", _class_folders, dataset_dir / split)
                 for split in ("train", "test")}
    elif layout == "nt":
        files = {split: _cached(cache_dir / f"{split}.csv", _fasta_with_labels, dataset_dir / f"{split}.fna")
                 for split in ("train", "test")}
    else:
        raise DnabertError(f"suite.layout={layout!r} is not one of {', '.join(LAYOUTS)}.")
    missing = [str(path) for split, path in files.items() if split != "dev" and not path.is_file()]  # GUE
    if missing:
        raise DnabertError(f"{dataset_dir} lacks {', '.join(missing)}; is it laid out as the {layout} original?")
    return {split: path for split, path in files.items() if path.is_file()}


def class_counts(dataset_dir: Path) -> dict[str, dict[str, int]]:
    """Sequences per split and class of a dataset in the genomic_benchmarks layout (<split>/<class>/<id>.txt)."""
    return {split.name: {folder.name: sum(1 for _ in folder.glob("*.txt"))
                         for folder in sorted(split.iterdir()) if folder.is_dir()}
            for split in sorted(dataset_dir.iterdir()) if split.is_dir()}


def _class_folders(split_dir: Path) -> list[tuple[str, str]]:
    classes = sorted(path for path in split_dir.iterdir() if path.is_dir()) if split_dir.is_dir() else []
    if not classes:
        raise DnabertError(f"{split_dir} has no class folders (<class>/<id>.txt), as genomic_benchmarks writes.")
    return [(path.read_text().strip(), folder.name) for folder in classes for path in sorted(folder.glob("*.txt"))]


def _fasta_with_labels(fasta: Path) -> list[tuple[str, str]]:
    if not fasta.is_file():
        raise DnabertError(f"{fasta} is missing; the NT tasks ship <task>/train.fna and <task>/test.fna.")
    rows, header, sequence = [], None, []
    for line in [*fasta.read_text().splitlines(), ">"]:
        if line.startswith(">"):
            if header is not None:
                name, bar, label = header.rpartition("|")
                if not bar or not label.strip():
                    raise DnabertError(f"{fasta}: header {header!r} does not end in |<label>.")
                rows.append(("".join(sequence), label.strip()))
            header, sequence = line[1:].strip(), []
        elif line.strip():
            sequence.append(line.strip())
    return rows


def _cached(out: Path, read: Callable[[Path], list[tuple[str, str]]], source: Path) -> Path:
    """`out` as a `sequence,label` csv of `read(source)`, written once."""
    if out.is_file():
        return out
    rows = read(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, suffix=".part")
    with os.fdopen(handle, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(("sequence", "label"))
        writer.writerows(rows)
    os.replace(temporary, out)
    return out
