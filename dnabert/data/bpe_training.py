"""Train DNABERT-2's BPE tokenizer on the pretraining stream and cache it (the tokenizer itself:
dnabert.data.tokenizers.bpe).

Why it looks like this:
- The training text is the start of the pretraining stream itself (`WindowDataModule.window_source`: the
  training split of every genome, mixed by weight, cut by the same seed), read until `train_bp` bp. The
  tokenizer sees the corpus in the proportions the model will, never a held-out region, and the same seed gives
  the same text and so the same file. Sample windows are TRAINING_WINDOW_BP long, the length of the sequences of
  the released DNABERT-2 corpus (DNABERT_2 #149).
- Training on first use (`ensure_bpe_tokenizer`) caches the result under a key of the settings and the genomes'
  identity (files, sizes, mtimes, contig choice, weights, held-out split), like the interval cache: a second run,
  a requeued job or another DDP rank reuses it (one process trains while the others wait on a file lock).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, trainers

from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.tokenizers.bpe import DEFAULT_VOCAB_SIZE, TOKENIZER_FILE, new_bpe_tokenizer, save_bpe, windows_as_text
from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import SPECIAL_TOKENS
from dnabert.errors import DnabertError

TRAINING_WINDOW_BP = 1000  # sample windows: the length of the released DNABERT-2 corpus's sequences
_READ_CHUNK = 1024  # windows read from the stream at once
_CACHE_VERSION = 1  # bump when training or the file layout changes


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
