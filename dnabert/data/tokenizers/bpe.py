"""BPE tokenizer for DNABERT-2-style runs: train it from the configured genomes, cache it, tokenise windows.

Why it looks like this:
- The training text is the start of the pretraining stream itself (`WindowDataModule.window_source`: the
  training split of every genome, mixed by weight, cut by the same seed), read until `train_bp` bp. The
  tokenizer sees the corpus in the proportions the model will, never a held-out region, and the same seed gives
  the same text and so the same file. Sample windows are TRAINING_WINDOW_BP long, the length of the sequences of
  the released DNABERT-2 corpus (DNABERT_2 #149).
- HF `tokenizers` BPE with the Whitespace pre-tokenizer and the five special tokens, as in the authors' script
  (DNABERT_2 #74); each window is one word, so merges never cross windows.
- Special ids are the k-mer vocabulary's, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (dnabert.data.tokenizers.kmer),
  not the published DNABERT-2 order ([UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4): collation, packing, masking and
  both model families then share one set of ids. A tokenizer whose five special tokens hold ids 0..4 in another
  order (the published one) is converted rather than used: `convert_bpe` swaps those ids and nothing else, so every
  DNA string keeps its token ids, and `install_bpe` writes the converted file into the run directory that uses
  it; the imported weights swap the same rows (dnabert.models.dnabert2.interop). `load_bpe` refuses any other
  layout, and a published-order file too, naming the conversion: the data path never sees two sets of ids.
- Training on first use (`ensure_bpe_tokenizer`) caches the result under a key of the settings and the genomes'
  identity (files, sizes, mtimes, contig choice, weights, held-out split), like the interval cache: a second run,
  a requeued job or another DDP rank reuses it (one process trains while the others wait on a file lock).
- The data path (`BpeWindowTokenizer.collate`) tokenises windows in the dataloader workers, one thread each
  (TOKENIZERS_PARALLELISM=false: workers are the parallelism), and cuts each to `max_tokens`.

Command line:
    python -m dnabert.data.tokenizers.bpe train --fasta human.fa --fasta mouse.fa:0.5 --train-bp 100000000 --out tok/
    python -m dnabert.data.tokenizers.bpe convert DNABERT-2-117M/ --out tok/
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from dnabert.data.datamodule import GenomeDataModule, SequenceBatch
from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS
from dnabert.errors import DnabertError, command_line

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_VOCAB_SIZE = 4096  # DNABERT-2
TRAINING_WINDOW_BP = 1000  # sample windows: the length of the released DNABERT-2 corpus's sequences
_READ_CHUNK = 1024  # windows read from the stream at once
_CACHE_VERSION = 1  # bump when training or the file layout changes
_LETTERS = np.frombuffer(NUCLEOTIDES.encode("ascii"), dtype=np.uint8)  # code -> ASCII letter


def windows_as_text(codes: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Rows of nucleotide codes (valid up to `lengths`) as upper-case strings."""
    letters = _LETTERS[codes]
    return [row[:length].tobytes().decode("ascii") for row, length in zip(letters, lengths.tolist(), strict=True)]


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained DNABERT-2-style tokenizer: BPE, Whitespace pre-tokenizer, `[CLS] seq [SEP]` when asked for
    special tokens, and a decoder that joins tokens back into the sequence."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def training_texts(data: GenomeDataModule, train_bp: int, report: Callable[[str], None]) -> Iterator[str]:
    """The first `train_bp` bp of the data module's seeded training stream, as windows of TRAINING_WINDOW_BP."""
    source = data.window_source(dataclasses.replace(data.rule, window_bp=TRAINING_WINDOW_BP))
    seen, first, next_report, started = 0, 0, train_bp / 10, time.monotonic()
    while seen < train_bp:
        batch = source.read(first, _READ_CHUNK)
        first += _READ_CHUNK
        for text in windows_as_text(batch.codes, batch.lengths):
            text = text[: train_bp - seen]
            seen += len(text)
            yield text
            if seen >= train_bp:
                break
        if seen >= next_report:
            elapsed = time.monotonic() - started
            report(f"  read {seen:,} of {train_bp:,} bp ({seen / train_bp:.0%}) in {elapsed:.1f} s")
            next_report += train_bp / 10


def train_bpe(data: GenomeDataModule, train_bp: int, vocab_size: int = DEFAULT_VOCAB_SIZE,
              report: Callable[[str], None] = print) -> Tokenizer:
    """Train the BPE tokenizer on the start of `data`'s training stream (deterministic for its seed)."""
    if train_bp < 1 or vocab_size <= len(SPECIAL_TOKENS) + len(NUCLEOTIDES):
        raise DnabertError(
            f"tokenizer.train_bp={train_bp} and tokenizer.vocab_size={vocab_size}: the budget must be positive and "
            f"the vocabulary larger than the {len(SPECIAL_TOKENS)} special tokens and 4 nucleotides."
        )
    tokenizer = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=list(NUCLEOTIDES))
    started = time.monotonic()
    report(f"Training a BPE tokenizer (vocabulary {vocab_size:,}) on {train_bp:,} bp of the stream ...")
    tokenizer.train_from_iterator(training_texts(data, train_bp, report), trainer=trainer)
    elapsed = time.monotonic() - started
    report(f"  trained {tokenizer.get_vocab_size():,} tokens in {elapsed:.1f} s ({train_bp / elapsed:,.0f} bp/s)")
    return tokenizer


def save_bpe(tokenizer: Tokenizer, out_dir: Path) -> Path:
    """Write out_dir/tokenizer.json (+ transformers' config files, so AutoTokenizer loads the folder)."""
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, unk_token=unk, cls_token=cls,
                                           sep_token=sep, mask_token=mask)
    hf_tokenizer.save_pretrained(str(out_dir))
    return out_dir / TOKENIZER_FILE


def mean_bp_per_token(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    """Average token length on `texts`: windows of window_bp bp give about window_bp / this many tokens."""
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return sum(map(len, texts)) / max(sum(len(encoding.ids) for encoding in encodings), 1)


def cache_key(data: GenomeDataModule, train_bp: int, vocab_size: int) -> str:
    """What decides the trained file: the settings, the stream's seed and cut, and the genomes' identity."""
    genomes = []
    for source in data.sources:
        files = []
        for path in source.fasta_paths:
            if not path.is_file():
                raise DnabertError(f"FASTA file {path} does not exist; check the genome's `fasta` setting.")
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        genomes.append([source.name, source.weight, source.include, source.exclude, files])
    identity = {
        "version": _CACHE_VERSION, "vocab_size": vocab_size, "train_bp": train_bp, "window_bp": TRAINING_WINDOW_BP,
        "seed": data.seed, "length_rule": data.rule.length_rule, "k": data.k,
        "reverse_complement": data.reverse_complement, "genomes": genomes,
        "held_out": [data.val_fraction, data.val_block_size, data.val_contigs, data.split_seed],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_bpe_tokenizer(data: GenomeDataModule, train_bp: int, vocab_size: int, cache_dir: str | Path,
                         report: Callable[[str], None] = print) -> Path:
    """The cached tokenizer.json for these settings and genomes, trained first if absent."""
    directory = Path(cache_dir).expanduser() / "tokenizers" / f"bpe-{cache_key(data, train_bp, vocab_size)}"
    path = directory / TOKENIZER_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another rank training the same file: wait, then reuse it
            if path.is_file():
                report(f"BPE tokenizer: {path} (cached)")
                return path
            tokenizer = train_bpe(data, train_bp, vocab_size, report)
            partial = directory.with_name(directory.name + f".partial-{os.getpid()}")
            save_bpe(tokenizer, partial)
            for written in partial.iterdir():  # the files appear whole or not at all
                os.replace(written, directory / written.name)
            partial.rmdir()
    except OSError as err:
        raise DnabertError(
            f"cannot write the BPE tokenizer cache in {directory} ({err.strerror}); set paths.cache_dir to a "
            "writable folder, or train one with `python -m dnabert.data.tokenizers.bpe train` and set tokenizer.file."
        ) from err
    report(f"BPE tokenizer: {path}")
    return path


def bpe_file(file: str | Path) -> Path:
    """The tokenizer.json that `file` names (the file, or a folder holding one); a missing one is refused."""
    path = Path(file).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DnabertError(
            f"tokenizer file {path} does not exist; set tokenizer.file to a tokenizer.json, or null to train one."
        )
    return path


def read_bpe(file: str | Path) -> tuple[Path, Tokenizer]:
    """(path, tokenizer) of a tokenizer.json or a folder holding one, whatever its special ids."""
    path = bpe_file(file)
    try:
        return path, Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
        raise DnabertError(f"{path} is not a tokenizers JSON file ({err}); point tokenizer.file at one.") from err


def special_id_order(tokenizer: Tokenizer) -> tuple[int, ...] | None:
    """Where the project's special tokens sit: new id i = old id order[i] (the identity for this project's layout,
    (3, 0, 1, 2, 4) for the published DNABERT-2 one); None unless the five occupy ids 0..4 in some order."""
    order = tuple(tokenizer.token_to_id(token) for token in SPECIAL_TOKENS)
    return None if None in order or sorted(order) != list(range(len(order))) else order


def _special_ids_message(path: Path, tokenizer: Tokenizer) -> str:
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    wanted = " ".join(f"{token}={index}" for index, token in enumerate(SPECIAL_TOKENS))
    return f"{path} has special ids {ids}; this project needs {wanted}"


def load_bpe(file: str | Path) -> Tokenizer:
    """A tokenizer.json (or a folder holding one) with this project's special ids; anything else is refused."""
    path, tokenizer = read_bpe(file)
    _require_project_ids(path, tokenizer)
    return tokenizer


def _require_project_ids(path: Path, tokenizer: Tokenizer) -> None:
    order = special_id_order(tokenizer)
    if order is None:
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)}. Train one with "
            "`python -m dnabert.data.tokenizers.bpe train` or set tokenizer.file=null."
        )
    if order != tuple(range(len(order))):
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)} (the published DNABERT-2 tokenizer numbers them differently). "
            "train.py and finetune.py convert it themselves when it is tokenizer.file or in a pretrained= directory; "
            f"to use it elsewhere, convert it: `python -m dnabert.data.tokenizers.bpe convert {path} --out DIR`."
        )


def convert_bpe(file: str | Path) -> tuple[Tokenizer, tuple[int, ...]]:
    """`file`'s tokenizer with the project's special ids, and the permutation (new id i = old id order[i]).

    Only the five special ids move, in the model's vocabulary, the added tokens, the post-processor and the padding
    settings; tokens and merges stay, so every DNA string encodes to the same ids as before. A layout whose special
    tokens are not ids 0..4 is refused."""
    return _renumbered(*read_bpe(file))


def _renumbered(path: Path, tokenizer: Tokenizer) -> tuple[Tokenizer, tuple[int, ...]]:
    order = special_id_order(tokenizer)
    if order is None:
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)}, and only a tokenizer whose five special tokens hold ids 0..4 "
            "(in any order, as the published DNABERT-2 one) can be converted. Train one with "
            "`python -m dnabert.data.tokenizers.bpe train`."
        )
    new_id = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    content = json.loads(tokenizer.to_str())
    content["model"]["vocab"].update(new_id)
    for entry in content["added_tokens"]:
        entry["id"] = new_id.get(entry["content"], entry["id"])
    _renumber_post_processor(content.get("post_processor"), new_id)
    if content.get("padding"):  # padding enabled in the file: it pads with [PAD]'s id
        padding = content["padding"]
        padding["pad_id"] = new_id.get(padding["pad_token"], padding["pad_id"])
    return Tokenizer.from_str(json.dumps(content)), order


def _renumber_post_processor(processor: dict | None, new_id: dict[str, int]) -> None:
    """Give the post-processor's special tokens their new ids: TemplateProcessing's table, Bert/RobertaProcessing's
    (token, id) pairs, and those inside a Sequence."""
    if processor is None:
        return
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [new_id.get(token, old) for token, old in zip(special["tokens"], special["ids"], strict=True)]
    for field in ("cls", "sep"):
        if field in processor:
            token, old = processor[field]
            processor[field] = [token, new_id.get(token, old)]
    for inner in processor.get("processors") or []:
        _renumber_post_processor(inner, new_id)


def convertible(tokenizer: Tokenizer) -> bool:
    """Whether the special tokens hold ids 0..4 in another order than the project's (the published DNABERT-2 one)."""
    order = special_id_order(tokenizer)
    return order is not None and order != tuple(range(len(order)))


def install_bpe(file: str | Path, directory: Path) -> tuple[Path, bool]:
    """`directory`/tokenizer.json: `file` as it is, or converted (`convert_bpe`) when `convertible`; and whether it
    was converted. Every DDP rank may call it: each writes the same bytes through its own staging file and renames
    it into place, so the file is whole whenever it exists."""
    return _install(*read_bpe(file), directory)


def _install(path: Path, tokenizer: Tokenizer, directory: Path) -> tuple[Path, bool]:
    converted = convertible(tokenizer)
    target = directory / TOKENIZER_FILE
    staging = target.with_name(f".{TOKENIZER_FILE}.{socket.gethostname()}-{os.getpid()}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if converted:
            _renumbered(path, tokenizer)[0].save(str(staging))
        else:
            shutil.copyfile(path, staging)
        os.replace(staging, target)
    except OSError as err:
        raise DnabertError(f"cannot write {target} ({err.strerror}); the run directory must be writable.") from err
    return target, converted


def usable_bpe(file: str | Path, directory: Path | None) -> Path:
    """The tokenizer.json the data path can use for `file`: the file itself when it has the project's special
    ids, converted into `directory` when `convertible` (refused, as by `load_bpe`, without a directory)."""
    path, tokenizer = read_bpe(file)
    if directory is not None and convertible(tokenizer):
        return _install(path, tokenizer, directory)[0]
    _require_project_ids(path, tokenizer)
    return path


class BpeWindowTokenizer:
    """The data path's BPE: windows of codes -> `[CLS] tokens [SEP] [PAD]..` rows cut to the token budget
    (dnabert.data.datamodule.WindowTokenizer). Pickles as its path; each worker loads the file once."""

    def __init__(self, file: str | Path) -> None:
        self.file = bpe_file(file)
        self._tokenizer: Tokenizer | None = load_bpe(self.file)
        self.vocab_size = self._tokenizer.get_vocab_size()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __repr__(self) -> str:
        return f"BPE ({self.vocab_size:,} tokens, {self.file})"

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_bpe(self.file)
        return self._tokenizer

    def token_ids(self, batch: SequenceBatch, max_tokens: int) -> list[list[int]]:
        """Each window's BPE ids, cut to the `max_tokens - 2` that fit between [CLS] and [SEP]."""
        encodings = self.tokenizer.encode_batch_fast(windows_as_text(batch.codes, batch.lengths),
                                                     add_special_tokens=False)
        return [encoding.ids[: max_tokens - 2] for encoding in encodings]

    def sequence_ids(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """Whole raw sequences' BPE ids, no special tokens and no cut (dnabert.data.labelled.Tokenize): fine-tuning
        and the probe window long ones themselves."""
        encodings = self.tokenizer.encode_batch_fast(list(sequences), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

    def collate(self, batch: SequenceBatch, max_tokens: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
        """The batch contract of dnabert.data.datamodule.collate, with BPE tokens in place of k-mers."""
        rows = self.token_ids(batch, max_tokens)
        counts = np.array([len(row) for row in rows], dtype=np.int64)
        width = -(-(int(counts.max(initial=0)) + 2) // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        input_ids[:, 0] = CLS_ID
        tokens = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows]) if rows else np.zeros(0, np.int64)
        row_of = np.repeat(np.arange(len(rows)), counts)
        column = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        input_ids[row_of, column] = tokens
        input_ids[np.arange(len(rows)), counts + 1] = SEP_ID
        return {"input_ids": torch.from_numpy(input_ids), "window": torch.from_numpy(batch.window)}


def _parse_genome(text: str) -> dict:
    """`PATH` or `PATH:WEIGHT` -> a data.genomes entry named after the file."""
    path, separator, weight = text.rpartition(":")
    try:
        share = float(weight) if separator else 1.0
    except ValueError:
        path, share = text, 1.0
    if not separator:
        path = text
    return {"name": Path(path).name.split(".")[0], "fasta": path, "weight": share}


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dnabert.data.tokenizers.bpe train`: a tokenizer.json from FASTA files, weighted like a run;
    `convert`: a published-order tokenizer.json with this project's special ids."""
    parser = argparse.ArgumentParser(prog="python -m dnabert.data.tokenizers.bpe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a BPE tokenizer on windows sampled from the genomes")
    train.add_argument("--fasta", action="append", required=True, metavar="PATH[:WEIGHT]",
                       help="a genome FASTA and its share of the stream (default 1); repeat for several genomes")
    train.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json (+ transformers config)")
    train.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    train.add_argument("--train-bp", type=float, default=1e8, help="bp of sampled windows to train on")
    train.add_argument("--seed", type=int, default=0, help="the stream's seed (data.seed of the run)")
    train.add_argument("--val-fraction", type=float, default=0.01, help="held out as in the run (data.val_fraction)")
    convert = commands.add_parser("convert", help="renumber a tokenizer's special ids (the published DNABERT-2 order) "
                                  "to this project's, keeping every other token's id")
    convert.add_argument("file", type=Path, help="tokenizer.json or its folder")
    convert.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json (+ transformers config)")
    args = parser.parse_args(argv)
    if args.command == "convert":
        tokenizer, order = convert_bpe(args.file)
        print(f"wrote {save_bpe(tokenizer, args.out)} (new special id i = old id {list(order)}[i])")
        return 0
    data = GenomeDataModule([_parse_genome(text) for text in args.fasta], seed=args.seed,
                            val_fraction=args.val_fraction, num_workers=0)
    tokenizer = train_bpe(data, int(args.train_bp), args.vocab_size)
    path = save_bpe(tokenizer, args.out)
    sample = list(training_texts(data, min(int(args.train_bp), 1_000_000), lambda _: None))
    print(f"  {mean_bp_per_token(tokenizer, sample):.2f} bp per token on average (size data.window_bp with it)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
