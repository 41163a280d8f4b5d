"""Training corpora that are tables of sequences, read through Hugging Face `datasets`.

Formats: parquet, csv, tsv, json/jsonl, arrow, a `save_to_disk` directory, plain text (one raw sequence per line)
and the original DNABERT k-mer text (one line of space-separated overlapping k-mers per sequence; a tab and a
label after it, as in DNABERT's fine-tuning .tsv files, are ignored).

Why it looks like this:
- A table is treated as a genome whose contigs are its rows (`SequenceTable`): the A/C/G/T runs of every row are
  its intervals, so the window cut, the seeded per-epoch shuffle, the endless stream of epochs, sharding over
  ranks and workers, resume and validation are all GenomeDataModule's (through `WindowDataModule`), not a copy.
- Rows are split at every non-A/C/G/T character (N, IUPAC, gaps), as the genome path does; runs shorter than k
  are dropped. Both are counted in the start-up report. A row longer than the model's window
  (max_tokens - 2 + k - 1 nt) is cut into consecutive windows by the length rule; configs/data/sequences.yaml uses
  "fixed" (full windows after a random per-epoch phase, the short tail dropped); "original" gives DNABERT's
  random-length cut. A row that fits is always one window.
- Stream windows read `window` = (table, row, start, end): table 0 is `path`, table 1 a separate `val_path`.
- datasets converts a file to arrow once (cached in cache_dir); start-up scans every row once for its runs
  (about 100 Mnt/s on one core; 24 bytes of memory per run), then windows fetch their rows by index from the
  memory-mapped table, in any process, so the sequences themselves are never all in memory.
"""

from __future__ import annotations

import gzip
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dnabert.data.datamodule import WindowDataModule
from dnabert.data.tokenizers.kmer import INVALID_CODE, check_k, encode_nucleotides, kmers_to_sequence
from dnabert.errors import DnabertError

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "tsv", "json", "arrow", "saved", "text", "kmer_text")
_EXTENSION_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".json": "json",
                      ".jsonl": "json", ".arrow": "arrow", ".txt": "text"}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_TEXT_COLUMN = "text"  # what datasets' "text" builder names its one column
_SEQUENCE = "sequence"  # the column kmer_text rows become
_SCAN_ROWS = 16_384  # rows per vectorised A/C/G/T scan
_VAL_ROWS_TAG = 7  # RNG stream tag of the held-out row draw


def detect_format(path: Path) -> str:
    """The format of `path` from its extension; .txt/.tsv files whose first data line is overlapping k-mers are
    DNABERT k-mer text."""
    if path.is_dir():
        return "saved"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    found = _EXTENSION_FORMATS.get(suffixes[-1] if suffixes else "")
    if found is None:
        raise DnabertError(
            f"cannot tell the format of {path} from its extension; set data.format to one of {', '.join(FORMATS)}."
        )
    if found in ("text", "tsv") and _looks_like_kmer_text(path):
        return "kmer_text"
    return found


def _first_lines(path: Path, count: int) -> list[str]:
    """Up to `count` non-blank lines of a (possibly gzipped) text file; none when it cannot be read."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="ascii", errors="replace") as handle:
            return list(itertools.islice(filter(str.strip, handle), count))
    except OSError:
        return []


def _looks_like_kmer_text(path: Path) -> bool:
    return any(_kmers_of_line(line) is not None for line in _first_lines(path, 2))


def _has_no_rows(path: Path, file_format: str) -> bool:
    """Whether a file that datasets failed on is merely empty (each of its builders fails differently on that)."""
    try:
        if file_format == "parquet":
            return pq.read_metadata(path).num_rows == 0
        if file_format == "arrow":
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_stream(source).read_all().num_rows == 0
    except (OSError, pa.ArrowException):
        return False
    header_lines = 1 if file_format in ("csv", "tsv") else 0
    return len(_first_lines(path, header_lines + 1)) <= header_lines


def _kmers_of_line(line: str) -> list[str] | None:
    """The k-mers of a k-mer text line (field before a tab), or None when it is not one (e.g. a header)."""
    kmers = line.split("\t", 1)[0].split()
    if len(kmers) < 2 or len({len(kmer) for kmer in kmers}) != 1:
        return None
    if set("".join(kmers).upper()) - set("ACGTN"):
        return None
    return kmers


def load_table(path: str | Path, file_format: str | None, sequence_column: str, k: int,
               cache_dir: str | Path | None = None) -> Any:
    """A `datasets.Dataset` of `path` with its sequences in one column (returned as the dataset's only column).

    `cache_dir` receives datasets' arrow conversion of the file (a copy the size of the data) and k-mer text's
    decoded sequences; None uses datasets' default (~/.cache/huggingface/datasets).
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise DnabertError(f"data.path={path} does not exist; point it at a sequence file or saved dataset.")
    file_format = file_format or detect_format(path)
    if file_format not in FORMATS:
        raise DnabertError(f"data.format={file_format!r} is unknown; use one of {', '.join(FORMATS)} (or null).")
    cache = str(Path(cache_dir) / "datasets") if cache_dir else None
    try:
        if file_format == "saved":
            table = _single_split(datasets.load_from_disk(str(path)), path)
        else:
            builder = {"tsv": "csv", "kmer_text": "text"}.get(file_format, file_format)
            options = {"sep": "\t"} if file_format == "tsv" else {}
            table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, **options)
    except DnabertError:
        raise
    except Exception as err:  # datasets/pyarrow/pandas raise many types for an unreadable file
        if file_format != "saved" and _has_no_rows(path, file_format):
            raise DnabertError(f"{path} is empty (no rows); point data.path at a file with sequences.") from err
        cause = err.__cause__ or err  # datasets wraps the reader's own, more telling error
        raise DnabertError(
            f"cannot read {path} as {file_format} ({type(cause).__name__}: {cause}); check the file or set "
            "data.format."
        ) from err
    if file_format == "kmer_text":
        return _kmer_text_sequences(table, path, k)
    if file_format == "text":
        sequence_column = _TEXT_COLUMN
    if sequence_column not in table.column_names:
        raise DnabertError(
            f"{path} has no column {sequence_column!r}; its columns are {table.column_names}. "
            "Set data.sequence_column to the one holding the sequences."
        )
    dtype = getattr(table.features[sequence_column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DnabertError(
            f"column {sequence_column!r} of {path} holds {table.features[sequence_column]}, not text; "
            "set data.sequence_column to the column of nucleotide strings."
        )
    return table.select_columns([sequence_column])


def _single_split(loaded: Any, path: Path) -> Any:
    """A saved DatasetDict gives its "train" split (or its only one)."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DnabertError(f"{path} holds splits {list(loaded)} but no 'train'; save the split to train on alone.")


def _kmer_text_sequences(table: Any, path: Path, k: int) -> Any:
    """Lines of overlapping k-mers -> a "sequence" column of nucleotides (a header line is skipped)."""
    if len(table) and _kmers_of_line(table[0][_TEXT_COLUMN]) is None:
        table = table.select(range(1, len(table)))
        first_line = 2
    else:
        first_line = 1

    def decode(batch: dict[str, list[str]], indices: list[int]) -> dict[str, list[str]]:
        return {_SEQUENCE: [_kmer_line_sequence(line, k, path, first_line + index)
                            for line, index in zip(batch[_TEXT_COLUMN], indices, strict=True)]}

    return table.map(decode, batched=True, with_indices=True, remove_columns=table.column_names,
                     desc=f"k-mer text -> sequences ({path.name})")


def _kmer_line_sequence(line: str, k: int, path: Path, line_number: int) -> str:
    kmers = line.split("\t", 1)[0].split()
    if not kmers:
        return ""
    if len(kmers[0]) != k:
        raise DnabertError(
            f"{path} line {line_number}: k-mer {kmers[0]!r} has {len(kmers[0])} letters but k={k}; set tokenizer.k "
            "to the file's k-mer size."
        )
    try:
        return kmers_to_sequence(kmers)
    except DnabertError as err:
        raise DnabertError(f"{path} line {line_number}: {err}") from err


class SequenceTable:
    """A table of sequences seen as a genome whose contigs are rows (what WindowDataModule reads windows from).

    `intervals` are the A/C/G/T runs of at least k nt of all rows, (row, start, end); `split` assigns them to
    training and validation by row.
    """

    def __init__(self, name: str, table: Any, k: int) -> None:
        self.name = name
        self.table = table
        self.k = check_k(k)
        self.rows = len(table)
        self.intervals, self.counts = _scan(table, self.k)
        self.train_intervals = self.intervals
        self.val_intervals = self.intervals[:0]

    def split(self, val_rows: np.ndarray | None) -> None:
        """Hold out the rows `val_rows` (a bool mask over rows); None makes the whole table validation data."""
        if val_rows is None:
            self.train_intervals, self.val_intervals = self.intervals[:0], self.intervals
            return
        held_out = val_rows[self.intervals[:, 0]]
        self.train_intervals, self.val_intervals = self.intervals[~held_out], self.intervals[held_out]

    def gather_codes(self, contig_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Codes at `positions` (n, L) of rows `contig_index` (n,): each distinct row is fetched once."""
        rows, row_of = np.unique(np.asarray(contig_index, dtype=np.int64), return_inverse=True)
        sequences = self.table[rows.tolist()][self.table.column_names[0]]
        codes = [encode_nucleotides(sequence) for sequence in sequences]
        offsets = np.cumsum([0] + [len(c) for c in codes[:-1]])
        return np.concatenate(codes)[offsets[row_of][:, None] + positions]

    def report(self) -> str:
        counts = self.counts
        return (
            f"sequences '{self.name}': {self.rows:,} rows, {counts['nucleotides']:,} nt in {len(self.intervals):,} "
            f"A/C/G/T runs of >= {self.k} nt; {counts['rows_split']:,} rows split at {counts['invalid']:,} "
            f"non-ACGT characters, {counts['rows_dropped']:,} rows dropped (no run of k nt: empty, too short or "
            f"all N); training {len(self.train_intervals):,} runs, validation {len(self.val_intervals):,} runs"
        )


def _scan(table: Any, k: int) -> tuple[np.ndarray, dict[str, int]]:
    """The A/C/G/T runs (row, start, end) of >= k nt of every row, vectorised over batches of rows."""
    parts = []
    counts = {"nucleotides": 0, "invalid": 0, "rows_split": 0, "rows_dropped": 0}
    for first, sequences in _column_batches(table):
        sequences = [sequence or "" for sequence in sequences]  # a null cell is an empty row
        lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
        # An invalid separator byte after every row, so that no run crosses a row boundary.
        codes = encode_nucleotides("\n".join(sequences) + "\n")
        row_starts = np.cumsum(lengths + 1) - (lengths + 1)
        is_valid = codes != INVALID_CODE
        invalid_per_row = lengths - np.add.reduceat(is_valid.astype(np.int64), row_starts)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], is_valid]).view(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        keep = ends - starts >= k
        starts, ends = starts[keep], ends[keep]
        row = np.searchsorted(row_starts, starts, side="right") - 1
        local_starts = starts - row_starts[row]
        parts.append(np.column_stack([row + first, local_starts, local_starts + ends - starts]))
        counts["nucleotides"] += int((ends - starts).sum())
        counts["invalid"] += int(invalid_per_row.sum())
        used = np.bincount(row, minlength=len(sequences)) > 0
        counts["rows_split"] += int(((invalid_per_row > 0) & used).sum())
        counts["rows_dropped"] += int((~used).sum())
    intervals = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    return intervals.astype(np.int64), counts


def _column_batches(table: Any) -> Iterator[tuple[int, list[str | None]]]:
    column = table.column_names[0]
    for first in range(0, len(table), _SCAN_ROWS):
        yield first, table[first : first + _SCAN_ROWS][column]


def held_out_rows(n_rows: int, val_fraction: float, split_seed: int) -> np.ndarray:
    """A seeded bool mask of round(val_fraction * n_rows) rows (at least one when val_fraction > 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DnabertError(f"data.val_fraction={val_fraction} must be in [0, 1).")
    count = min(max(round(val_fraction * n_rows), 1 if val_fraction > 0 else 0), n_rows - 1)
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.random.default_rng([split_seed, _VAL_ROWS_TAG]).permutation(n_rows)[:count]] = True
    return mask


class SequenceDataModule(WindowDataModule):
    """Training stream and validation set from a table of sequences (see the module docstring for formats).

    path: file or saved-dataset directory; format: one of FORMATS or None (from the extension);
    sequence_column: the column of raw sequences (ignored for text and kmer_text); validation is val_path (read
    like path) if given, else a seeded val_fraction of the rows (placed by split_seed). The other settings are
    GenomeDataModule's.
    """

    full_length_validation = False  # rows are the samples: validate on them whatever their length
    no_validation_hint = "set data.val_fraction > 0 or data.val_path"

    def __init__(
        self,
        path: str | Path,
        format: str | None = None,
        sequence_column: str = _SEQUENCE,
        val_path: str | Path | None = None,
        val_fraction: float = 0.01,
        k: int = 6,
        micro_batch_size: int = 10,
        num_workers: int = 2,
        seed: int = 0,
        length_rule: str = "fixed",
        max_tokens: int = 512,
        val_max_windows: int = 2000,
        split_seed: int = 0,
        reverse_complement: bool = False,
        cache_dir: str | Path | None = None,
        pad_to_multiple_of: int = 8,
        pin_memory: bool = torch.cuda.is_available(),
        batches_per_transfer: int = 8,
        rank: int | None = None,
        world_size: int | None = None,
        start_position: int | None = None,
        pack_rows: bool = False,
        pack_row_tokens: int | None = None,
    ) -> None:
        super().__init__(
            k, micro_batch_size, num_workers, seed, length_rule, max_tokens, val_max_windows, split_seed,
            reverse_complement, pad_to_multiple_of, pin_memory, batches_per_transfer, rank, world_size,
            start_position, pack_rows=pack_rows, pack_row_tokens=pack_row_tokens,
        )
        self.path = Path(path) if path else None
        self.format = format
        self.sequence_column = sequence_column
        self.val_path = Path(val_path) if val_path else None
        self.val_fraction = val_fraction
        self.cache_dir = cache_dir
        self.genomes: list[SequenceTable] = []

    def _load(self, path: Path | None) -> Any:
        # Checked here, not in __init__: Hydra would wrap an error raised while instantiating the config.
        if path is None:
            raise DnabertError("No sequence file given: set data.path=/path/to/sequences.parquet (csv, json, ...).")
        return load_table(path, self.format, self.sequence_column, self.k, self.cache_dir)

    def prepare_data(self) -> None:
        """Convert the files to arrow once per node (datasets caches it), before the ranks' `setup`."""
        self._load(self.path)
        if self.val_path is not None:
            self._load(self.val_path)

    def setup(self, stage: str | None = None) -> None:
        if self.genomes:
            return
        table = self._load(self.path)
        train = SequenceTable(self.path.name, table, self.k)
        if not len(train.intervals):
            raise DnabertError(
                f"{self.path} has no sequence with {self.k} or more consecutive A/C/G/T ({train.rows} rows); "
                "check data.path and data.sequence_column."
            )
        self.genomes = [train]
        if self.val_path is not None:
            val = SequenceTable(self.val_path.name, self._load(self.val_path), self.k)
            val.split(None)
            self.genomes.append(val)
        else:
            train.split(held_out_rows(train.rows, self.val_fraction, self.split_seed))
        if not len(train.train_intervals):
            raise DnabertError(f"data.val_fraction={self.val_fraction} leaves no training rows; lower it.")
        self.report = "\n".join([*(table.report() for table in self.genomes), self.windows_report()])
        logger.info("%s", self.report)

    def stream_weights(self) -> list[float]:
        return [1.0] + [0.0] * (len(self.genomes) - 1)  # a separate validation table never trains
