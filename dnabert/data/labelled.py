"""Labelled sequences for fine-tuning and the pretraining probe: reading, labels, splits, token windows.

Two input forms give the same raw sequences (so the same batches):
- DNABERT's fine-tuning text: a header, then `<space-separated overlapping k-mers>\\t<label>` per line (CRLF and a
  header separated by spaces, as in the released example files, are tolerated);
- tables of raw sequences (csv/tsv/parquet/json/arrow or a `save_to_disk` folder), read through `datasets`, with
  named sequence and label columns.

Rows with characters other than A/C/G/T are dropped and counted (a warning says how many), never tokenised as
[UNK]. Tokenisation is one seam, `Tokenize` (raw sequences -> ids without special tokens), so a backbone with
another vocabulary (DNABERT-2's BPE) plugs in with its own function. Sequences longer than the model's positions
become overlapping windows whose predictions the model averages (`token_windows`), never a silent truncation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dnabert.data.sources import _kmers_of_line, detect_format
from dnabert.data.tokenizers.kmer import (
    INVALID_CODE,
    check_k,
    encode_nucleotides,
    kmer_ids_from_codes,
    kmers_to_sequence,
)
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.errors import DnabertError

log = logging.getLogger("dnabert")

TASK_TYPES = ("auto", "classification", "regression")
Tokenize = Callable[[Sequence[str]], list[np.ndarray]]


@dataclass
class LabelledSet:
    """Raw upper-case A/C/G/T sequences and their labels as read from one file (labels not yet mapped)."""

    path: Path
    sequences: list[str]
    labels: list
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, rows: np.ndarray) -> LabelledSet:
        return LabelledSet(self.path, [self.sequences[i] for i in rows], [self.labels[i] for i in rows])


def read_labelled(path: str | Path, k: int | None, sequence_column: str = "sequence",
                  label_column: str = "label") -> LabelledSet:
    """Read a labelled file in either form. `k` checks DNABERT k-mer text against the backbone (None: any k)."""
    path = Path(path)
    if not path.exists():
        raise DnabertError(f"labelled file {path} does not exist; check task.train/task.dev/task.test or probe.path.")
    file_format = detect_format(path)
    if file_format == "kmer_text":
        sequences, labels = _read_kmer_text(path, k)
    else:
        sequences, labels = _read_table(path, file_format, sequence_column, label_column)
    return _drop_invalid(path, sequences, labels)


def _read_kmer_text(path: Path, k: int | None) -> tuple[list[str], list]:
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()  # splitlines: CRLF too
    if lines and _kmers_of_line(lines[0]) is None:
        lines = lines[1:]  # the header ("sequence\tlabel", or with spaces in the released files)
    sequences, labels = [], []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        kmer_field, tab, label = line.rpartition("\t")
        if not tab or not label.strip():
            raise DnabertError(f"{path} line {number} has no tab-separated label; DNABERT's format is "
                               "'<k-mers>\\t<label>' per line.")
        kmers = kmer_field.split()
        if k is not None and len(kmers[0]) != k:
            raise DnabertError(f"{path} holds {len(kmers[0])}-mers but the backbone has k={k}; use a file "
                               f"of {k}-mers (or raw sequences, which any k reads).")
        letters = kmers[0] + "".join(kmer[-1] for kmer in kmers[1:])
        if (encode_nucleotides(letters) == INVALID_CODE).any():
            sequences.append(letters)  # dropped and counted by _drop_invalid, like a raw row with an N
        else:
            try:
                sequences.append(kmers_to_sequence(kmers))
            except DnabertError as err:
                raise DnabertError(f"{path} line {number}: {err}") from err
        labels.append(label.strip())
    return sequences, labels


def _read_table(path: Path, file_format: str, sequence_column: str, label_column: str) -> tuple[list[str], list]:
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a "Generating train split" bar for one small file only clutters the run's log
    try:
        if file_format == "saved":
            table = datasets.load_from_disk(str(path))
        else:
            builder = {"tsv": "csv"}.get(file_format, file_format)
            options = {"sep": "\t"} if file_format == "tsv" else {}
            table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # datasets/pyarrow raise many types for an unreadable file
        cause = err.__cause__ or err
        raise DnabertError(f"cannot read {path} as {file_format} ({type(cause).__name__}: {cause}).") from err
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if isinstance(table, datasets.DatasetDict):
        raise DnabertError(f"{path} holds several splits {list(table)}; save each split on its own.")
    missing = [name for name in (sequence_column, label_column) if name not in table.column_names]
    if missing:
        raise DnabertError(
            f"{path} has no column(s) {missing}; its columns are {table.column_names}. Set task.sequence_column "
            "and task.label_column (probe.sequence_column / probe.label_column for the probe)."
        )
    sequences = [str(value or "").upper() for value in table[sequence_column]]
    labels = list(table[label_column])
    if any(label is None or label == "" for label in labels):
        raise DnabertError(f"{path}: column {label_column!r} has empty labels; every row needs one.")
    return sequences, labels


def _drop_invalid(path: Path, sequences: list[str], labels: list) -> LabelledSet:
    keep = [i for i, sequence in enumerate(sequences)
            if sequence and not (encode_nucleotides(sequence) == INVALID_CODE).any()]
    dropped = len(sequences) - len(keep)
    if not keep:
        raise DnabertError(f"{path} has no row of only A/C/G/T ({len(sequences)} rows); check the sequence column.")
    if dropped:
        log.warning("%s: dropped %d of %d rows with characters other than A/C/G/T (N, IUPAC codes) or empty.",
                    path, dropped, len(sequences))
    result = LabelledSet(path, [sequences[i].upper() for i in keep], [labels[i] for i in keep])
    result.dropped = dropped
    return result


# --------------------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelSpace:
    """How raw labels become targets: class names in id order (classification) or none (regression)."""

    task_type: str  # "classification" or "regression"
    names: tuple[str, ...] = ()

    @property
    def num_outputs(self) -> int:
        return len(self.names) if self.task_type == "classification" else 1

    def targets(self, data: LabelledSet) -> torch.Tensor:
        if self.task_type == "regression":
            try:
                return torch.tensor([float(label) for label in data.labels], dtype=torch.float32)
            except ValueError as err:
                raise DnabertError(f"{data.path}: a regression label is not a number ({err}).") from err
        index = {name: i for i, name in enumerate(self.names)}
        unknown = sorted({str(label) for label in data.labels} - set(index))
        if unknown:
            raise DnabertError(f"{data.path} has labels {unknown[:5]} that the training file lacks "
                               f"(its classes: {list(self.names)}); every split must use the training classes.")
        return torch.tensor([index[str(label)] for label in data.labels], dtype=torch.long)


def label_space(train: LabelledSet, task_type: str = "auto") -> LabelSpace:
    """Classes from the training labels (integers in numeric order, strings sorted), or regression.

    `auto` is regression when some label is a number that is not an integer, else classification."""
    if task_type not in TASK_TYPES:
        raise DnabertError(f"task.type={task_type!r}: use one of {', '.join(TASK_TYPES)}.")
    numbers = _as_numbers(train.labels)
    if task_type == "auto":
        fractional = numbers is not None and any(value != int(value) for value in numbers)
        task_type = "regression" if fractional else "classification"
    if task_type == "regression":
        if numbers is None:
            raise DnabertError(f"{train.path}: task.type=regression needs numeric labels.")
        return LabelSpace("regression")
    distinct = set(str(label) for label in train.labels)
    if numbers is not None and all(value == int(value) for value in numbers):
        names = tuple(sorted(distinct, key=float))
    else:
        names = tuple(sorted(distinct))
    if len(names) < 2:
        raise DnabertError(f"{train.path} has only one class ({names[0]!r}); classification needs at least two.")
    return LabelSpace("classification", names)


def _as_numbers(labels: Sequence) -> list[float] | None:
    try:
        return [float(label) for label in labels]
    except (TypeError, ValueError):
        return None


def split_rows(count: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """A seeded permutation of `count` rows cut into len(fractions)+1 parts (the rest is the last part)."""
    if sum(fractions) >= 1 or min(fractions, default=0) < 0:
        raise DnabertError(f"split fractions {list(fractions)} must be >= 0 and sum to less than 1.")
    order = np.random.default_rng(seed).permutation(count)
    bounds = np.cumsum([round(fraction * count) for fraction in fractions])
    return [np.sort(part) for part in np.split(order, bounds)]


# ------------------------------------------------------------------------------------- tokenisation
def kmer_tokenizer(k: int) -> Tokenize:
    """DNABERT's tokenisation: overlapping k-mer ids (no special tokens) of A/C/G/T sequences."""
    k = check_k(k)

    def tokenize(sequences: Sequence[str]) -> list[np.ndarray]:
        for sequence in sequences:
            if len(sequence) < k:
                raise DnabertError(f"a sequence of {len(sequence)} nt is shorter than k={k}: it has no k-mers.")
        return [kmer_ids_from_codes(encode_nucleotides(sequence), k) for sequence in sequences]

    return tokenize


def token_windows(ids: np.ndarray, max_positions: int) -> list[np.ndarray]:
    """`[CLS] ids [SEP]` rows no longer than `max_positions`: one row when it fits, else windows that overlap by
    half a window, the last one ending at the sequence's end (every token is seen, none twice in a row more than
    needed). The model averages the windows' predictions."""
    width = window_width(max_positions)
    cls, sep = np.array([CLS_ID]), np.array([SEP_ID])
    return [np.concatenate((cls, ids[start:start + width], sep)).astype(np.int64)
            for start in window_starts(len(ids), width)]


def window_width(max_positions: int) -> int:
    """Tokens of a sequence per window: the positions less [CLS] and [SEP]."""
    if max_positions - 2 < 1:
        raise DnabertError(f"max_positions={max_positions} leaves no room for tokens between [CLS] and [SEP].")
    return max_positions - 2


def window_starts(length: int, width: int) -> list[int]:
    """Where `token_windows` starts each window of a sequence of `length` tokens (the index of its first token)."""
    return [0] if length <= width else sorted(set(range(0, length - width, max(width // 2, 1))) | {length - width})


@dataclass
class WindowedSet(torch.utils.data.Dataset):
    """Token windows of each sequence with its target: what a fine-tuning or probe loader serves."""

    windows: list[list[np.ndarray]]
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[list[np.ndarray], torch.Tensor]:
        return self.windows[index], self.targets[index]


def windowed_set(data: LabelledSet, targets: torch.Tensor, tokenize: Tokenize, max_positions: int) -> WindowedSet:
    return WindowedSet([token_windows(ids, max_positions) for ids in tokenize(data.sequences)], targets)


def collate_windows(items: Sequence[tuple[list[np.ndarray], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of sequences: all their windows as rows (padded to a multiple of 8), and which sequence each row
    belongs to, so predictions can be averaged per sequence.

    {"input_ids": (W, T) long, "sequence_index": (W,) long, "labels": (B,)}"""
    rows = [window for windows, _ in items for window in windows]
    owner = [index for index, (windows, _) in enumerate(items) for _ in windows]
    width = -(-max(len(row) for row in rows) // 8) * 8
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for row_index, row in enumerate(rows):
        input_ids[row_index, : len(row)] = torch.from_numpy(row)
    return {
        "input_ids": input_ids,
        "sequence_index": torch.tensor(owner, dtype=torch.long),
        "labels": torch.stack([target for _, target in items]),
    }
