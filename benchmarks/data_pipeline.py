"""Data-path throughput, FASTA -> masked micro-batch: ours beside the original DNABERT's way, same windows, one run.

Ours: the real training loader (GenomeDataModule.train_dataloader: window stream, genome mmap reads,
vectorised k-mer ids, collation, optional packing (dnabert.data.packing), dataloader workers), then
dnabert.data.masking.mask_batch on the CPU batch. In training masking runs on the GPU; doing it here on the CPU is
the worst case for the data path.

Reference, written the way the original DNABERT did it: each window read as a string (pyfaidx), turned into
space-joined k-mer text, tokenised by transformers' BertTokenizer over the k-mer vocabulary (padded to
max_tokens), special tokens found per sequence with the tokenizer, and span masking expanded by a Python loop per
sequence. Two references: the pure-Python BertTokenizer DNABERT used (transformers 5: BertTokenizerLegacy), and
transformers 5's Rust-backed BertTokenizer (a faster, modernised reference).

    python -m benchmarks.data_pipeline                         # bundled 1 Mbp genome, full-length windows
    python -m benchmarks.data_pipeline --length-rule original --workers 2 4
    python -m benchmarks.data_pipeline --synthetic-mbp 200     # a 200 Mbp random FASTA in /tmp (page cache cold-ish)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyfaidx
import torch

from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.genome import Genome, GenomeSource, HeldOut
from dnabert.data.masking import centre_rate_for, mask_batch
from dnabert.data.tokenizers.kmer import write_vocab
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.data.windows import WindowRule, WindowStream

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_FASTA = ROOT / "data" / "genomes" / "human_chr22_20-21M.fa"


def synthetic_fasta(megabases: int, directory: Path) -> Path:
    """A random A/C/G/T FASTA of `megabases` Mbp in 10 contigs (60 bp lines), made once and reused."""
    path = directory / f"dnabert_bench_{megabases}mbp.fa"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    contig_bp = megabases * 1_000_000 // 10
    full_lines = contig_bp // 60
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        for contig in range(10):
            bases = letters[rng.integers(0, 4, contig_bp)]
            lines = np.full((full_lines, 61), ord("\n"), dtype=np.uint8)
            lines[:, :60] = bases[: full_lines * 60].reshape(full_lines, 60)
            tail = bases[full_lines * 60 :].tobytes()
            handle.write(f">chr{contig + 1}\n".encode() + lines.tobytes() + (tail + b"\n" if tail else b""))
    partial.rename(path)
    return path


def masked_batches(loader: Iterable[dict[str, torch.Tensor]], k: int,
                   rate: float | None) -> Iterator[dict[str, torch.Tensor]]:
    """Our micro-batches from the real training loader, masked on the CPU unless rate is None."""
    for index, batch in enumerate(loader):
        if rate is None:
            yield batch
            continue
        generator = torch.Generator().manual_seed(index)
        batch["input_ids"], batch["labels"] = mask_batch(batch["input_ids"], k, rate, generator)
        yield batch


class ReferencePipeline:
    """The original DNABERT data path on the same windows: strings, k-mer text, BertTokenizer, Python masking."""

    def __init__(self, genome: Genome, stream: WindowStream, k: int, max_tokens: int, vocab_dir: Path,
                 python_tokenizer: bool) -> None:
        from transformers import BertTokenizer
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        vocab = str(write_vocab(k, vocab_dir / "vocab.txt"))
        if python_tokenizer:  # the pure-Python BertTokenizer that DNABERT's DNATokenizer extended
            self.tokenizer = BertTokenizerLegacy(vocab_file=vocab, do_lower_case=False)
        else:  # transformers 5: Rust-backed; note that it takes `vocab=`, and silently ignores `vocab_file=`
            self.tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False)
        # The plain file the genome reads (a bgzip FASTA's decompressed copy): pyfaidx's own BGZF reader fails on
        # valid files (Biopython's 65,536-byte blocks), and the reference is about tokenising, not decompressing.
        self.fasta = pyfaidx.Fasta(str(genome.files[0].plain), as_raw=True, sequence_always_upper=True)
        self.contig_names = genome.contig_names
        self.stream, self.k, self.max_tokens = stream, k, max_tokens
        self.span = list(range(-((k - 1) // 2), k - (k - 1) // 2))  # the k tokens around a span centre

    def batch(self, first: int, count: int, rate: float) -> dict[str, torch.Tensor]:
        windows = self.stream.windows(first, count)
        texts = []
        for contig, start, length in zip(windows.contig, windows.start, windows.length, strict=True):
            sequence = self.fasta[self.contig_names[contig]][int(start) : int(start + length)]
            texts.append(" ".join(sequence[i : i + self.k] for i in range(len(sequence) - self.k + 1)))
        encoded = self.tokenizer(texts, max_length=self.max_tokens, padding="max_length", truncation=True)
        input_ids = torch.tensor(encoded["input_ids"])
        return self.mask(input_ids, centre_rate_for(rate, self.k))

    def mask(self, input_ids: torch.Tensor, centre_rate: float) -> dict[str, torch.Tensor]:
        labels = input_ids.clone()
        special = [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                   for row in input_ids.tolist()]
        probability = torch.full(input_ids.shape, centre_rate)
        probability.masked_fill_(torch.tensor(special, dtype=torch.bool) | (input_ids == PAD_ID), 0.0)
        centres = torch.bernoulli(probability).bool()
        masked = torch.zeros_like(centres)
        for row in range(input_ids.shape[0]):  # the per-sequence span expansion of the original
            last = int(torch.nonzero(probability[row]).max()) if probability[row].any() else 0
            covered = set()
            for centre in torch.nonzero(centres[row]).flatten().tolist():
                covered.update(i for i in (centre + offset for offset in self.span) if 1 <= i <= last)
            masked[row, sorted(covered)] = True
        labels[~masked] = -100
        replace = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & masked
        input_ids[replace] = self.tokenizer.mask_token_id
        randomise = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & masked & ~replace
        input_ids[randomise] = torch.randint(len(self.tokenizer), labels.shape)[randomise]
        return {"input_ids": input_ids, "labels": labels}


def timed(batches: Iterator[dict[str, torch.Tensor]], seconds: float, rounds: int = 5) -> tuple[float, float]:
    """(windows/s, real tokens/s) of the best of `rounds` rounds of about seconds/rounds each (whole batches).

    The best round, not the mean: on a shared machine other processes only ever slow a round down.
    """
    next(batches)  # warm-up: workers started, caches filled
    best = (0.0, 0.0)
    for _ in range(rounds):
        windows = tokens = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / rounds:
            batch = next(batches)
            windows += batch["window"].shape[0] if "window" in batch else batch["input_ids"].shape[0]
            tokens += int((batch["input_ids"] != PAD_ID).sum())
        elapsed = time.perf_counter() - start
        best = max(best, (windows / elapsed, tokens / elapsed))
    return best


def reference_batches(reference: ReferencePipeline, micro_batch: int, rate: float) -> Iterator[dict]:
    index = 0
    while True:
        yield reference.batch(index * micro_batch, micro_batch, rate)
        index += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", type=Path, default=BUNDLED_FASTA)
    parser.add_argument("--synthetic-mbp", type=int, default=0, help="generate a random FASTA of this size in /tmp")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--length-rule", default="fixed", choices=("fixed", "original"),
                        help="fixed: every window full length (the target's unit); original: the recipe's mix")
    parser.add_argument("--micro-batch", type=int, default=64, help="windows per micro-batch")
    parser.add_argument("--pack-row-tokens", type=int, default=0, help="pack windows into rows of this many tokens")
    parser.add_argument("--rate", type=float, default=0.15)
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="DataLoader worker counts to measure")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measuring time per configuration (best of 5 rounds)")
    parser.add_argument("--mask-on-device", action="store_true",
                        help="leave masking out, as in training (it runs on the GPU after the transfer)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    fasta = synthetic_fasta(args.synthetic_mbp, Path(tempfile.gettempdir())) if args.synthetic_mbp else args.fasta
    cache_dir = Path(tempfile.gettempdir()) / "dnabert_bench_cache"
    opening = time.perf_counter()
    genome = Genome.open(GenomeSource("bench", fasta), args.k, HeldOut(val_fraction=0.0), cache_dir)
    open_seconds = time.perf_counter() - opening
    rule = WindowRule(args.k, args.max_tokens, args.length_rule)
    stream = WindowStream([genome.train_intervals], [1.0], rule, seed=0)

    def ours(workers: int) -> Iterator[dict[str, torch.Tensor]]:
        data = GenomeDataModule(
            [GenomeSource("bench", fasta)], k=args.k, micro_batch_size=args.micro_batch, num_workers=workers,
            length_rule=args.length_rule, max_tokens=args.max_tokens, cache_dir=cache_dir, pin_memory=False,
            pack_rows=bool(args.pack_row_tokens), pack_row_tokens=args.pack_row_tokens or None,
        )
        return masked_batches(data.train_dataloader(), args.k, None if args.mask_on_device else args.rate)

    references = {}
    with tempfile.TemporaryDirectory() as vocab_dir:
        for python_tokenizer in (True, False):
            reference = ReferencePipeline(genome, stream, args.k, args.max_tokens, Path(vocab_dir), python_tokenizer)
            references[python_tokenizer] = timed(reference_batches(reference, args.micro_batch, args.rate),
                                                 args.seconds)
    one_windows, one_tokens = timed(ours(0), args.seconds)

    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# data pipeline, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or 'cpu'}"
          f" x {cpus} cores, load average {load:.1f} at the end of setup")
    print(f"# fasta {fasta} ({genome.intervals[:, 2].sum() - genome.intervals[:, 1].sum():,} bp A/C/G/T), k={args.k},"
          f" max_tokens={args.max_tokens}, length rule {args.length_rule}, micro-batch {args.micro_batch} windows,"
          f" packing {'rows of ' + str(args.pack_row_tokens) if args.pack_row_tokens else 'off'},"
          f" our masking {'left to the device' if args.mask_on_device else 'on the CPU'}")
    copy = f", read from its decompressed copy {genome.files[0].plain}" if genome.files[0].bgzip else ""
    print(f"# genome opened in {open_seconds:.1f} s (the first open scans{' and decompresses' if copy else ''}){copy}")
    python_reference, rust_reference = references[True][0], references[False][0]

    def row(label: str, windows: float, tokens: float, cores: int) -> None:
        ratios = f"{windows / cores / python_reference:>10.1f}x{windows / cores / rust_reference:>10.1f}x"
        print(f"{label:<40}{windows:>11,.0f}{tokens:>14,.0f}{ratios}")

    print(f"{'pipeline':<40}{'windows/s':>11}{'tokens/s':>14}{'per core vs reference: Python / Rust tokenizer':>50}")
    row("reference, Python BertTokenizer, 1 core", *references[True], 1)
    row("reference, Rust BertTokenizer, 1 core", *references[False], 1)
    row("ours, 1 core (in process)", one_windows, one_tokens, 1)
    for workers in args.workers:
        row(f"ours, {workers} dataloader workers", *timed(ours(workers), args.seconds), workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
