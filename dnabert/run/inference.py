"""Using a trained model: sequences in, embeddings or predictions out, streamed in batches.

What the command lines of dnabert.tools.embed, .predict and .attention share:

- reading sequences (``SequenceSource``): FASTA (plain or gzip/bgzip), tables (csv/tsv/parquet, a sequence
  column and an optional id column) or one sequence per line, streamed record by record; letters are upper-cased
  and a sequence with anything but A/C/G/T is refused, or skipped and counted (``non_acgt="skip"``);
- loading a model for inference, of any family, with the code fine-tuning uses (``load_backbone``: whatever
  ``pretrained=`` accepts; ``load_classifier``: a fine-tuned seed folder, its hf_model/ export or a fine-tuning
  checkpoint), in eval mode on the chosen device;
- windows: a sequence longer than the window becomes the overlapping windows of fine-tuning
  (``dnabert.data.labelled.token_windows``); pooled vectors and logits are averaged over a sequence's windows, a
  token's vector is the mean over the windows that hold it;
- per-nucleotide vectors: base j gets the mean of the vectors of the tokens whose span holds it (k-mers: the up to
  k k-mers covering it; BPE: its one token, repeated over the token's bases);
- writers that append one batch at a time to a staging file (``<out>.partial``) renamed into place at the end,
  so memory does not grow with the number of sequences and a failed run leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from dnabert.data.genome import open_text
from dnabert.data.labelled import (
    LabelSpace,
    Tokenize,
    collate_windows,
    token_windows,
    window_starts,
    window_width,
)
from dnabert.data.tokenizers.bpe import TOKENIZER_FILE, load_bpe
from dnabert.data.tokenizers.kmer import INVALID_CODE, encode_nucleotides
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.models import family_of_directory
from dnabert.run.finetuning import (
    Backbone,
    build_encoder,
    load_weights,
    resolve_backbone,
    tokenizer_for,
    window_positions,
)
from dnabert.run.saved_models import is_finetune_checkpoint, load_classifier_checkpoint, load_classifier_directory
from dnabert.tasks.finetune import average_by_sequence, window_means

log = logging.getLogger("dnabert")

INPUT_FORMATS = ("auto", "fasta", "table", "lines")
NON_ACGT = ("error", "skip")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None}


# ------------------------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class SequenceRecord:
    id: str
    sequence: str


@dataclass
class SequenceSource:
    """The sequences of one input file, read lazily: `records()` streams them (once), `count` is known up front
    for parquet only (the progress bar's total), `skipped` counts the sequences left out under `non_acgt="skip"`."""

    path: Path
    input_format: str = "auto"
    sequence_column: str = "sequence"
    id_column: str | None = None
    non_acgt: str = "error"
    skipped: int = field(default=0, init=False)
    count: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise DnabertError(f"Input {self.path} does not exist; pass a FASTA, a csv/tsv/parquet table or a file "
                               "of sequences, one per line.")
        if self.input_format not in INPUT_FORMATS:
            raise DnabertError(f"--format {self.input_format} is unknown; use one of {', '.join(INPUT_FORMATS)}.")
        if self.non_acgt not in NON_ACGT:
            raise DnabertError(f"--non-acgt {self.non_acgt} is unknown; use one of {', '.join(NON_ACGT)}.")
        if self.input_format == "auto":
            self.input_format = self._detect()
        if self.input_format == "table":
            self._check_columns()

    def _table_suffix(self) -> str:
        suffixes = [suffix.lower() for suffix in self.path.suffixes if suffix.lower() != ".gz"]
        return suffixes[-1] if suffixes else ""

    def _detect(self) -> str:
        if self._table_suffix() in TABLE_SUFFIXES:
            return "table"
        with open_text(self.path, errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        return "fasta" if first.lstrip().startswith(">") else "lines"

    def _columns(self) -> list[str]:
        if self._table_suffix() == ".parquet":
            parquet = pq.ParquetFile(self.path)
            self.count = parquet.metadata.num_rows
            return parquet.schema_arrow.names
        with self._csv_reader(None) as reader:
            return reader.schema.names

    def _check_columns(self) -> None:
        if self._table_suffix() not in TABLE_SUFFIXES:
            raise DnabertError(f"{self.path}: a table must be .csv, .tsv or .parquet (optionally .gz for csv/tsv).")
        columns = self._columns()
        wanted = [self.sequence_column] + ([self.id_column] if self.id_column else [])
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise DnabertError(f"{self.path} has no column(s) {missing}; its columns are {columns}. Name them with "
                               "--sequence-column and --id-column.")
        if self.id_column is None and "id" in columns:
            self.id_column = "id"

    @contextlib.contextmanager
    def _csv_reader(self, columns: list[str] | None) -> Iterator[Any]:
        delimiter = TABLE_SUFFIXES[self._table_suffix()]
        convert = pacsv.ConvertOptions(include_columns=columns,
                                       column_types={name: pa.string() for name in columns or ()})
        try:
            reader = pacsv.open_csv(self.path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                    convert_options=convert)
        except (pa.ArrowInvalid, OSError) as err:
            raise DnabertError(f"Cannot read {self.path} as a table ({err}).") from err
        try:
            yield reader
        finally:
            reader.close()

    def _raw(self) -> Iterator[tuple[str, str]]:
        """(id, sequence as read) in file order."""
        if self.input_format == "fasta":
            yield from _fasta_records(self.path)
        elif self.input_format == "lines":
            with open_text(self.path, errors="replace") as handle:
                rows = (line.strip() for line in handle)
                yield from ((str(index), row) for index, row in enumerate(row for row in rows if row))
        else:
            yield from self._table_rows()

    def _table_rows(self) -> Iterator[tuple[str, str]]:
        columns = [self.sequence_column] + ([self.id_column] if self.id_column else [])
        if self._table_suffix() == ".parquet":
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=1024, columns=columns)
            yield from self._rows_of(batches)
        else:
            with self._csv_reader(columns) as reader:
                try:
                    yield from self._rows_of(reader)
                except pa.ArrowInvalid as err:
                    raise DnabertError(f"Cannot read {self.path} as a table ({err}).") from err

    def _rows_of(self, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[str, str]]:
        index = 0
        for batch in batches:
            sequences = batch.column(self.sequence_column).to_pylist()
            ids = batch.column(self.id_column).to_pylist() if self.id_column else None
            for row, sequence in enumerate(sequences):
                yield (str(ids[row]) if ids else str(index)), str(sequence or "")
                index += 1

    def records(self) -> Iterator[SequenceRecord]:
        """Upper-case A/C/G/T records; others refused (naming the record) or skipped and counted."""
        found = False
        for record_id, sequence in self._raw():
            found = True
            sequence = sequence.upper()
            if not sequence or (encode_nucleotides(sequence) == INVALID_CODE).any():
                if self.non_acgt == "skip":
                    self.skipped += 1
                    continue
                raise DnabertError(f"{self.path}: sequence {record_id!r} is empty or has letters other than A/C/G/T "
                                   "(N, IUPAC codes); clean it, or pass --non-acgt skip to leave such sequences out.")
            yield SequenceRecord(record_id, sequence)
        if not found:
            raise DnabertError(f"{self.path} holds no sequences; check the file (and --format).")
        if self.skipped:
            log.warning("%s: skipped %d sequence(s) empty or with letters other than A/C/G/T.", self.path,
                        self.skipped)


def _fasta_records(path: Path) -> Iterator[tuple[str, str]]:
    """(first word of the header, sequence) of each FASTA record, the lines of a record joined."""
    name, parts, index = None, [], 0
    with open_text(path, errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(parts)
                words = line[1:].split()
                name, parts, index = (words[0] if words else str(index)), [], index + 1
            elif name is None:
                raise DnabertError(f"{path} is not FASTA: text before the first '>' header.")
            else:
                parts.append(line)
    if name is not None:
        yield name, "".join(parts)


def batched(records: Iterator[SequenceRecord], size: int) -> Iterator[list[SequenceRecord]]:
    if size < 1:
        raise DnabertError(f"--batch-size {size} must be at least 1.")
    while chunk := list(islice(records, size)):
        yield chunk


# ----------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model ready for inference: its backbone description, the module (an encoder without MLM head, or a
    fine-tuned SequenceClassifier) in eval mode on `device`, its tokenisation and window size. `token_lengths`:
    bases per token id of a BPE tokenizer (None: k-mers of `backbone.k`)."""

    backbone: Backbone
    module: torch.nn.Module
    tokenize: Tokenize
    token_lengths: np.ndarray | None
    max_positions: int
    device: torch.device
    labels: LabelSpace | None = None

    @property
    def encoder(self) -> torch.nn.Module:
        return getattr(self.module, "backbone", self.module)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; otherwise a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DnabertError(f"--device {name} is not a device name; use auto, cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DnabertError(f"--device {name}: no CUDA GPU is visible here; use --device cpu (or auto).")
    return device


def _prepared(backbone: Backbone, module: torch.nn.Module, device: torch.device, max_positions: int | None,
              labels: LabelSpace | None = None) -> LoadedModel:
    """Tokenisation and window size of `backbone`, the module in eval mode on `device`."""
    tokenize = tokenizer_for(backbone)
    lengths = None if backbone.k is not None else bpe_token_lengths(backbone.tokenizer)
    return LoadedModel(backbone, module.eval().to(device), tokenize, lengths,
                       window_positions(backbone, max_positions), device, labels)


def load_backbone(pretrained: str, device: torch.device, max_positions: int | None = None) -> LoadedModel:
    """A pretrained model without its MLM head, from anything fine-tuning's `pretrained=` accepts (a run
    directory, a .ckpt, a transformers/MultiMolecule directory, the released DNABERT/DNABERT-2 weights)."""
    if not Path(pretrained).exists():
        raise DnabertError(f"Model {pretrained} does not exist; pass a pretraining run directory, a .ckpt or a "
                           "model directory (config.json).")
    if Path(pretrained).is_file() and is_finetune_checkpoint(Path(pretrained)):
        raise DnabertError(f"{pretrained} is a fine-tuning checkpoint; its predictions come from "
                           "python -m dnabert.tools.predict, embeddings from its pretrained backbone.")
    # A released DNABERT-2 tokenizer is converted into a folder that lives as long as the loading does: the
    # tokenizer is read into memory before it goes.
    with tempfile.TemporaryDirectory(prefix="dnabert-inference-") as work:
        backbone = resolve_backbone(pretrained, None, {}, None, Path(work))
        encoder = build_encoder(backbone)
        load_weights(encoder, backbone)
        model = _prepared(backbone, encoder, device, max_positions)
        if backbone.tokenizer and Path(backbone.tokenizer).is_relative_to(work):  # what the metadata names
            model.backbone = dataclasses.replace(backbone, tokenizer=f"{Path(pretrained) / TOKENIZER_FILE} (converted)")
        return model


def load_classifier(path: str | Path, device: torch.device, max_positions: int | None = None) -> LoadedModel:
    """A fine-tuned classifier from a seed folder (its best checkpoint, as results.json names it), the seed's
    hf_model/ export or a fine-tuning .ckpt. The window is `max_positions`, else the fine-tuning run's (its
    .hydra/config.yaml), else the backbone's default."""
    path = Path(path)
    if (path / "config.json").is_file():
        family = family_of_directory(json.loads((path / "config.json").read_text()))
        if family is None:
            raise DnabertError(f"{path} is not a fine-tuned model export that a model family recognises.")
        classifier, described, labels = load_classifier_directory(path, family)
        seed_dir = path.parent
    else:
        checkpoint = _seed_checkpoint(path) if (path / "checkpoints").is_dir() else path
        if not checkpoint.is_file() or not is_finetune_checkpoint(checkpoint):
            raise DnabertError(f"{path} is not a fine-tuned model: pass a seed folder (seed_<n>/), its hf_model/ or "
                               "a fine-tuning checkpoint (.ckpt).")
        classifier, described, labels = load_classifier_checkpoint(checkpoint)
        seed_dir = checkpoint.parent.parent
    backbone = Backbone(described["family"], described["k"], described["config"], None, str(path),
                        described.get("tokenizer"))
    if backbone.k is None and not backbone.tokenizer:
        raise DnabertError(f"{path} names no BPE tokenizer; pass its hf_model/ export, which carries one.")
    return _prepared(backbone, classifier, device, max_positions or _run_max_positions(seed_dir), labels)


def _seed_checkpoint(seed_dir: Path) -> Path:
    """The checkpoint a seed's results came from: results.json's best_checkpoint, else its one best-*.ckpt."""
    results = seed_dir / "results.json"
    if results.is_file():
        return seed_dir / "checkpoints" / json.loads(results.read_text())["best_checkpoint"]
    found = sorted((seed_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise DnabertError(f"{seed_dir} is not a fine-tuned model (no checkpoints/best-*.ckpt): pass a seed folder "
                           "of a finetune.py run (seed_<n>/), its hf_model/ or a fine-tuning checkpoint (.ckpt).")
    if len(found) > 1:
        raise DnabertError(f"{seed_dir} has {len(found)} checkpoints/best-*.ckpt and no results.json; pass the "
                           ".ckpt to use.")
    return found[0]


def _run_max_positions(seed_dir: Path) -> int | None:
    """The fine-tuning run's `max_positions` (its .hydra/config.yaml beside the seed folders), if set."""
    config = seed_dir.parent / ".hydra" / "config.yaml"
    return OmegaConf.load(config).get("max_positions") if config.is_file() else None


def bpe_token_lengths(tokenizer_file: str | Path) -> np.ndarray:
    """Bases per token id of a BPE tokenizer (its tokens are the DNA substrings they stand for)."""
    tokenizer = load_bpe(tokenizer_file)
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, index in tokenizer.get_vocab().items():
        lengths[index] = len(token)
    return lengths


# ---------------------------------------------------------------------------------------------- windows
@dataclass
class TokenisedBatch:
    """A batch of records as the model sees it: token ids per record (no special tokens), where each of its
    windows starts, and the windows collated as fine-tuning collates them (`input_ids`, `sequence_index`)."""

    records: list[SequenceRecord]
    ids: list[np.ndarray]
    starts: list[list[int]]
    input_ids: torch.Tensor
    sequence_index: torch.Tensor


def tokenise(model: LoadedModel, records: list[SequenceRecord]) -> TokenisedBatch:
    try:
        ids = model.tokenize([record.sequence for record in records])
    except DnabertError as err:  # a sequence shorter than k: name it
        short = [record.id for record in records if len(record.sequence) < (model.backbone.k or 1)]
        if not short:
            raise
        raise DnabertError(f"sequence {short[0]!r}: {err}") from err
    windows = [token_windows(row, model.max_positions) for row in ids]
    batch = collate_windows([(rows, torch.zeros(())) for rows in windows])
    width = window_width(model.max_positions)
    return TokenisedBatch(records, ids, [window_starts(len(row), width) for row in ids], batch["input_ids"],
                          batch["sequence_index"])


def token_spans(model: LoadedModel, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) in bases of each token of a sequence of `length` bases: k-mer i covers i..i+k-1; BPE tokens
    follow each other."""
    if model.token_lengths is None:
        starts = np.arange(len(ids))
        return starts, starts + model.backbone.k
    ends = np.cumsum(model.token_lengths[ids])
    if not len(ends) or ends[-1] != length:
        raise DnabertError(f"The BPE tokenizer {model.backbone.tokenizer} does not spell this {length}-base sequence "
                           "base for base ([UNK] tokens?); per-nucleotide output needs one that does.")
    return ends - model.token_lengths[ids], ends


def tokens_over_windows(hidden: torch.Tensor, rows: Sequence[int], starts: Sequence[int], count: int,
                        window: int) -> torch.Tensor:
    """(count, H): each token's vector, the mean over the windows (rows of `hidden`, [CLS] first, at most `window`
    tokens between [CLS] and [SEP]) that hold it."""
    sums = hidden.new_zeros(count, hidden.shape[-1])
    seen = hidden.new_zeros(count)
    for row, start in zip(rows, starts, strict=True):
        width = min(window, count - start)
        sums[start:start + width] += hidden[row, 1:1 + width]
        seen[start:start + width] += 1
    return sums / seen[:, None]


def nucleotide_vectors(token_vectors: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """(length, H): base j gets the mean of the vectors of the tokens whose span [start, end) holds it (prefix sums
    of the vectors entering at `starts` and leaving at `ends`, in float64)."""
    change = np.zeros((length + 1, token_vectors.shape[1]))
    np.add.at(change, starts, token_vectors)
    np.add.at(change, ends, -token_vectors.astype(np.float64))
    covering = np.cumsum(np.bincount(starts, minlength=length + 1) - np.bincount(ends, minlength=length + 1))
    return (np.cumsum(change, axis=0)[:length] / covering[:length, None]).astype(np.float32)


LEVELS = ("sequence", "token", "nucleotide")
POOLS = ("mean", "cls")


@torch.no_grad()
def embed(model: LoadedModel, batch: TokenisedBatch, level: str, pool: str) -> list[np.ndarray]:
    """One float32 array per record: (H,) pooled over its windows (`pool`: mean over each window's real tokens,
    [CLS]/[SEP] included, or the [CLS] state; the windows' vectors averaged), (tokens, H) or (bases, H)."""
    input_ids = batch.input_ids.to(model.device)
    real = input_ids != PAD_ID
    hidden = model.encoder.encode(input_ids, attention_mask=real).float()
    if level == "sequence":
        per_window = hidden[:, 0] if pool == "cls" else window_means(hidden, real)
        pooled = average_by_sequence(per_window, batch.sequence_index.to(model.device), len(batch.records))
        return list(pooled.cpu().numpy())
    hidden = hidden.cpu()
    outputs = []
    for index, (record, ids, starts) in enumerate(zip(batch.records, batch.ids, batch.starts, strict=True)):
        rows = torch.nonzero(batch.sequence_index == index).flatten().tolist()
        tokens = tokens_over_windows(hidden, rows, starts, len(ids), window_width(model.max_positions)).numpy()
        if level == "nucleotide":
            tokens = nucleotide_vectors(tokens, *token_spans(model, ids, len(record.sequence)), len(record.sequence))
        outputs.append(tokens)
    return outputs


@torch.no_grad()
def predict(model: LoadedModel, batch: TokenisedBatch) -> torch.Tensor:
    """(B, outputs) float32: the classifier's outputs, its windows' logits averaged (SequenceClassifier.forward)."""
    return model.module(batch.input_ids.to(model.device), batch.sequence_index.to(model.device),
                        len(batch.records)).float().cpu()


def tokenised_batches(model: LoadedModel, source: SequenceSource, batch_size: int,
                      progress: str) -> Iterator[TokenisedBatch]:
    """The source's records in batches of `batch_size`, tokenised and windowed, with a progress bar on stderr (in
    a terminal)."""
    with tqdm(total=source.count, desc=progress, unit=" seq", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        for records in batched(source.records(), batch_size):
            yield tokenise(model, records)
            bar.update(len(records))


# ---------------------------------------------------------------------------------------------- writers
class StagedOutput:
    """Files written under `<name>.partial` and renamed into place by `commit`; `discard` removes them."""

    def __init__(self, *paths: Path) -> None:
        self.paths = [Path(path) for path in paths]
        for path in self.paths:
            if path.is_dir():
                raise DnabertError(f"{path} is a directory; name an output file.")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DnabertError(f"Cannot create {path.parent} ({err.strerror}); choose another output.") from err
            if not os.access(path.parent, os.W_OK):
                raise DnabertError(f"{path.parent} is not writable; choose another output.")

    def staging(self, path: Path) -> Path:
        return path.with_name(path.name + ".partial")

    def commit(self) -> None:
        for path in self.paths:
            os.replace(self.staging(path), path)

    def discard(self) -> None:
        for path in self.paths:
            self.staging(path).unlink(missing_ok=True)


def _fixed_size(vectors: np.ndarray) -> pa.Array:
    """(n, H) float32 as a fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).ravel()),
                                             vectors.shape[1])


class TableWriter:
    """Appends Arrow tables, one per batch, to a parquet or csv file (by the output's suffix)."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path, self.metadata = path, metadata
        self.output = StagedOutput(path)
        self.writer: Any = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            staging = self.output.staging(self.path)
            if self.path.suffix == ".parquet":
                schema = table.schema.with_metadata({"dnabert": json.dumps(self.metadata)})
                self.writer = pq.ParquetWriter(staging, schema)
            else:
                self.writer = pacsv.CSVWriter(staging, table.schema)
        self.writer.write_table(table)

    def close(self, summary: dict[str, Any]) -> list[Path]:
        """Finish the file (parquet: the metadata with `summary` added) and move it into place."""
        if self.path.suffix == ".parquet":
            self.writer.add_key_value_metadata({"dnabert": json.dumps({**self.metadata, **summary})})
        self.writer.close()
        self.output.commit()
        return [self.path]

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.output.discard()


class EmbeddingTable:
    """Embeddings as a parquet table: pooled, one row per sequence (`id`, `embedding`); per token or nucleotide,
    one row per position (`id`, `position`, `embedding`), positions from 0."""

    def __init__(self, path: Path, level: str, metadata: dict[str, Any]) -> None:
        self.level = level
        self.table = TableWriter(path, metadata)

    def write(self, ids: list[str], vectors: list[np.ndarray]) -> None:
        if self.level == "sequence":
            columns = {"id": pa.array(ids), "embedding": _fixed_size(np.stack(vectors))}
        else:
            lengths = [len(rows) for rows in vectors]
            columns = {"id": pa.array(np.repeat(np.array(ids, dtype=object), lengths).tolist(), pa.string()),
                       "position": pa.array(np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)),
                       "embedding": _fixed_size(np.concatenate(vectors))}
        self.table.write(pa.table(columns))

    def close(self, summary: dict[str, Any]) -> list[Path]:
        return self.table.close(summary)

    def abort(self) -> None:
        self.table.abort()


NPY_HEADER_BYTES = 128  # reserved for the .npy header, rewritten with the final shape at the end


class EmbeddingArray:
    """Embeddings as one float32 .npy of rows (pooled: a row per sequence; else a row per position, sequence
    after sequence), `<stem>.ids.tsv` (id, first row, rows) and `<stem>.json` (the metadata). Rows are appended to
    the file as they come; the header, written last, gives the final shape."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path, self.metadata = path, metadata
        self.ids_path, self.json_path = path.with_suffix(".ids.tsv"), path.with_suffix(".json")
        self.output = StagedOutput(path, self.ids_path, self.json_path)
        self.rows, self.width = 0, None
        self.data = open(self.output.staging(path), "wb")  # noqa: SIM115 - closed by close/abort
        self.data.write(b"\0" * NPY_HEADER_BYTES)
        self.index = open(self.output.staging(self.ids_path), "w")  # noqa: SIM115
        self.index.write("id\tfirst_row\trows\n")

    def write(self, ids: list[str], vectors: list[np.ndarray]) -> None:
        for record_id, rows in zip(ids, vectors, strict=True):
            rows = np.atleast_2d(rows).astype(np.float32)
            self.width = rows.shape[1]
            self.data.write(np.ascontiguousarray(rows).tobytes())
            self.index.write(f"{record_id}\t{self.rows}\t{len(rows)}\n")
            self.rows += len(rows)

    def close(self, summary: dict[str, Any]) -> list[Path]:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (self.rows, self.width)}
        text = repr(header).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        padding = NPY_HEADER_BYTES - len(prefix) - 2 - len(text) - 1
        self.data.seek(0)
        self.data.write(prefix + (NPY_HEADER_BYTES - len(prefix) - 2).to_bytes(2, "little") + text
                        + b" " * padding + b"\n")
        self.data.close()
        self.index.close()
        self.output.staging(self.json_path).write_text(json.dumps({**self.metadata, **summary}, indent=2) + "\n")
        self.output.commit()
        return self.output.paths

    def abort(self) -> None:
        self.data.close()
        self.index.close()
        self.output.discard()


EMBEDDING_OUTPUTS = (".parquet", ".npy")
PREDICTION_OUTPUTS = (".parquet", ".csv")


def check_output(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """An output file name with one of `suffixes` (checked before a model loads)."""
    path = Path(path)
    if path.suffix not in suffixes:
        raise DnabertError(f"{path}: name the output {' or '.join(f'*{suffix}' for suffix in suffixes)}.")
    return path


def embedding_writer(path: Path, level: str, metadata: dict[str, Any]) -> EmbeddingTable | EmbeddingArray:
    path = check_output(path, EMBEDDING_OUTPUTS)
    return EmbeddingArray(path, metadata) if path.suffix == ".npy" else EmbeddingTable(path, level, metadata)


PER_NUCLEOTIDE_RULE = ("base j: the mean of the vectors of the tokens whose span holds it (k-mers: the up to k "
                       "overlapping k-mers covering it; BPE: its one token's vector)")
WINDOW_RULE = ("sequences longer than max_positions - 2 tokens: windows overlapping by half, as fine-tuning; pooled "
               "vectors averaged over the windows, a token's vector the mean over the windows holding it")


def describe(model: LoadedModel) -> dict[str, Any]:
    """What an output's metadata says about the model that made it."""
    backbone = model.backbone
    return {"model": backbone.source, "family": backbone.family, "k": backbone.k, "tokenizer": backbone.tokenizer,
            "hidden_size": int(backbone.config["hidden_size"]), "max_positions": model.max_positions}


def write_embeddings(model: LoadedModel, source: SequenceSource, out: Path, level: str, pool: str,
                     batch_size: int) -> tuple[list[Path], int]:
    """Embed every record of `source` into `out` (.parquet or .npy), one batch at a time; (files, sequences)."""
    if level not in LEVELS or pool not in POOLS:
        raise DnabertError(f"--level {level} / --pool {pool}: use levels {LEVELS} and pools {POOLS}.")
    metadata = {**describe(model), "level": level, "windows": WINDOW_RULE}
    metadata.update({"pool": pool} if level == "sequence" else {})
    metadata.update({"per_nucleotide": PER_NUCLEOTIDE_RULE} if level == "nucleotide" else {})
    writer = embedding_writer(out, level, metadata)
    return _drive(writer, tokenised_batches(model, source, batch_size, "embed"),
                  lambda batch: writer.write([record.id for record in batch.records], embed(model, batch, level, pool)),
                  source)


def write_predictions(model: LoadedModel, source: SequenceSource, out: Path, batch_size: int) -> tuple[list[Path], int]:
    """The classifier's label and class probabilities (regression: its value) per record, into `out`."""
    labels = model.labels
    metadata = {**describe(model), "task_type": labels.task_type, "labels": list(labels.names),
                "windows": WINDOW_RULE}
    table = TableWriter(check_output(out, PREDICTION_OUTPUTS), metadata)

    def write(batch: TokenisedBatch) -> None:
        outputs = predict(model, batch)
        columns: dict[str, Any] = {"id": pa.array([record.id for record in batch.records], pa.string())}
        if labels.task_type == "regression":
            columns["prediction"] = pa.array(outputs[:, 0].numpy())
        else:
            probabilities = torch.softmax(outputs, dim=-1)
            columns["label"] = pa.array([labels.names[i] for i in probabilities.argmax(dim=-1).tolist()], pa.string())
            for index, name in enumerate(labels.names):
                columns[f"probability_{name}"] = pa.array(probabilities[:, index].numpy())
        table.write(pa.table(columns))

    return _drive(table, tokenised_batches(model, source, batch_size, "predict"), write, source)


def _drive(writer: Any, batches: Iterator[TokenisedBatch], write: Callable[[TokenisedBatch], None],
           source: SequenceSource) -> tuple[list[Path], int]:
    """Write every batch, then commit the output; on any failure remove what was staged."""
    count = 0
    try:
        for batch in batches:
            write(batch)
            count += len(batch.records)
        if not count:
            raise DnabertError(f"{source.path}: every sequence was skipped (--non-acgt skip); nothing to write.")
        return writer.close({"sequences": count, "skipped": source.skipped}), count
    except BaseException:
        writer.abort()
        raise
