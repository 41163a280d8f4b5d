"""BPE (DNABERT-2) data path: tokenizer training speed (bp/s) and the per-core sequences/s of the real training loader
at 128 tokens, against what one GPU consumes.

The GPU side is arithmetic on DNABERT-2-117M (12 layers, hidden 768, GLU feed-forward 3072, vocabulary 4096):
training FLOPs per token = 6 x encoder matrix weights + 3 x 2 x 2 x layers x tokens x hidden (attention scores and
values) + 6 x hidden x vocabulary x mask rate (the MLM decoder on masked tokens only). At a dense 16-bit peak x MFU
that gives the sequences/s the data path must feed; workers = ceil(margin x that / per-core rate).

    python -m benchmarks.bpe_pipeline                        # bundled 1 Mbp genome, 128 tokens, window 700 bp
    python -m benchmarks.bpe_pipeline --train-mbp 1 4 --workers 0 2
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the per-core rate is the unit

import torch  # noqa: E402

from benchmarks.data_pipeline import BUNDLED_FASTA, timed  # noqa: E402
from dnabert.data.bpe_training import train_bpe  # noqa: E402
from dnabert.data.datamodule import GenomeDataModule  # noqa: E402
from dnabert.data.genome import GenomeSource  # noqa: E402
from dnabert.data.masking import mask_batch  # noqa: E402
from dnabert.data.tokenizers.bpe import BpeWindowTokenizer, save_bpe  # noqa: E402

H100_DENSE_BF16 = 989e12


def dnabert2_training_flops_per_token(tokens: int = 128, layers: int = 12, hidden: int = 768, ffn: int = 3072,
                                      vocab: int = 4096, mask_rate: float = 0.15) -> float:
    """Forward + backward (3 x forward) FLOPs per token of DNABERT-2-117M pretraining at `tokens` per sequence."""
    matrices_per_layer = 4 * hidden * hidden + 3 * hidden * ffn  # Q, K, V, out; GLU: gate, up, down
    head = hidden * hidden + hidden * vocab * mask_rate  # transform on every token here, decoder on masked ones
    forward = 2 * (layers * matrices_per_layer + head) + layers * 2 * 2 * tokens * hidden
    return 3 * forward


def loader_batches(data: GenomeDataModule, mask: bool) -> Iterator[dict[str, torch.Tensor]]:
    for index, batch in enumerate(data.train_dataloader()):
        if mask:
            generator = torch.Generator().manual_seed(index)
            batch["input_ids"], batch["labels"] = mask_batch(batch["input_ids"], None, 0.15, generator, mode="token",
                                                             vocab_size=data.tokenizer.vocab_size)
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", type=Path, default=BUNDLED_FASTA)
    parser.add_argument("--train-mbp", type=float, nargs="*", default=[1.0], help="tokenizer training budgets")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--window-bp", type=int, default=700)
    parser.add_argument("--micro-batch", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="*", default=[0], help="0 = in the main process (one core)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--margin", type=float, default=2.0, help="workers feed this many times the GPU's need")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cache_dir = Path(tempfile.gettempdir()) / "dnabert_bench_cache"

    def data_module(workers: int, tokenizer: BpeWindowTokenizer | None = None) -> GenomeDataModule:
        return GenomeDataModule(
            [GenomeSource("bench", args.fasta)], micro_batch_size=args.micro_batch, num_workers=workers,
            length_rule="fixed", max_tokens=args.max_tokens, cache_dir=cache_dir, pin_memory=False,
            val_fraction=0.0, tokenizer=tokenizer, window_bp=args.window_bp if tokenizer else None,
            rank=0, world_size=1, start_position=0,
        )

    load = os.getloadavg()[0]
    print(f"# BPE data path, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or 'cpu'} x "
          f"{os.cpu_count()} cores, load average {load:.1f}; fasta {args.fasta.name}")
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="dnabert_bench_bpe_"))
    for megabases in args.train_mbp:
        started = time.perf_counter()
        tokenizer = train_bpe(data_module(0), int(megabases * 1e6), report=lambda _: None)
        elapsed = time.perf_counter() - started
        print(f"tokenizer training: {megabases:g} Mbp in {elapsed:.1f} s = {megabases * 1e6 / elapsed:,.0f} bp/s "
              f"(vocabulary {tokenizer.get_vocab_size()})")
    bpe = BpeWindowTokenizer(save_bpe(tokenizer, tokenizer_dir))

    flops = dnabert2_training_flops_per_token(args.max_tokens)
    needed = H100_DENSE_BF16 * args.mfu / flops / args.max_tokens
    print(f"GPU side: {flops / 1e9:.3f} GFLOP of training per token at {args.max_tokens} tokens; one H100 at "
          f"{args.mfu:.0%} MFU consumes {needed:,.0f} sequences/s")
    for workers in args.workers:
        for mask in (False, True):
            sequences, tokens = timed(loader_batches(data_module(workers, bpe), mask), args.seconds)
            cores = max(workers, 1)
            per_core = sequences / cores
            print(f"loader, {workers} workers, masking {'on the CPU' if mask else 'on the device'}: "
                  f"{sequences:,.0f} sequences/s ({tokens / max(sequences, 1):.1f} real tokens each), "
                  f"{per_core:,.0f} per core -> {math.ceil(args.margin * needed / per_core)} workers feed one H100 "
                  f"with {args.margin:g}x margin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
