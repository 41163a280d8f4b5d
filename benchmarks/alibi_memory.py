"""Memory of one DNABERT-2 training step on the CPU: the former dense ALiBi bias against the shared one.

Before: one (B, heads, T, T) float32 bias per forward, ``where(key attendable, -slope * |i - j|, -inf)``
(``DenseAlibiDnaBert2`` restates it; SDPA keeps it for the backward). After: the model's one-window SDPA path,
one (1, heads, T, T) ALiBi bias shared by all rows and layers, key padding as an extra query/key channel.

Each (length, variant) runs in a fresh subprocess (glibc told to hand every block over 64 KiB back to the system, so
freed activations leave the resident set): one warm-up step (kernels, thread pool, the gradient buffers, kept as
in training), then the peak RSS growth (VmHWM) over one measured step, forward + backward, no optimiser. The model
is DNABERT-2-base's width (hidden 768, 12 heads of 64, GLU 3072, vocabulary 4096) with fewer layers so that
T = 2048 fits a small machine; half of the rows are shorter than T (padding).

    python -m benchmarks.alibi_memory                                  # T = 128, 512, 2048; batch 4; 2 layers
    python -m benchmarks.alibi_memory --lengths 128 512 --batch 8 --layers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from benchmarks.dnabert2_model import CLS, PAD, masked_windows
from benchmarks.memory import reset_peak, status_kb
from dnabert.models.components import IGNORE_INDEX, masked_lm_loss
from dnabert.models.dnabert2.model import DnaBert2ForMaskedLM, preset

VARIANTS = ("dense", "shared")
VOCAB = 4096


def dense_alibi_bias(model: DnaBert2ForMaskedLM, input_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The former bias of one-window rows: (B, heads, T, T) float32, -inf at keys a query may not attend to (padding,
    unless the row has no real token), cast to the attention's ``dtype``."""
    real = input_ids != model.config.pad_token_id
    attendable = (real | ~real.any(dim=1, keepdim=True))[:, None, None, :]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    distance = (positions[:, None] - positions[None, :]).abs().float()
    alibi = -model.alibi_slopes[None, :, None, None] * distance
    return torch.where(attendable, alibi, float("-inf")).to(dtype)


class DenseAlibiDnaBert2(DnaBert2ForMaskedLM):
    """DNABERT-2 with the former dense bias for one-window rows (the reference of tests/test_alibi.py)."""

    def encode(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None, packed=False) -> torch.Tensor:
        device = input_ids.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else self.bert.embeddings.word_embeddings.weight.dtype
        return self.bert.encoder(self.bert.embeddings(input_ids), dense_alibi_bias(self, input_ids, dtype))


def measure(variant: str, length: int, batch: int, layers: int) -> dict:
    config = preset("base", vocab_size=VOCAB, num_hidden_layers=layers, hidden_dropout_prob=0.0,
                    pad_token_id=PAD, cls_token_id=CLS)
    torch.manual_seed(0)
    model = (DenseAlibiDnaBert2 if variant == "dense" else DnaBert2ForMaskedLM)(config)
    input_ids, labels = masked_windows(batch, length, VOCAB, short_fraction=0.5, seed=0)
    masked = labels != IGNORE_INDEX

    def step() -> None:
        masked_lm_loss(model(input_ids, masked_positions=masked), labels[masked]).backward()

    step()
    reset_peak()
    before, began = status_kb("VmRSS"), time.perf_counter()
    step()
    return {"step_mb": (status_kb("VmHWM") - before) / 1024, "peak_mb": status_kb("VmHWM") / 1024,
            "seconds": time.perf_counter() - began}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.lengths[0], args.batch, args.layers)))
        return 0
    heads = 12
    print(f"# DNABERT-2 training-step memory, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.processor() or 'cpu'} x {os.cpu_count()} cores, torch {torch.__version__}; width of base, "
          f"{args.layers} layers, batch {args.batch}, float32, peak RSS growth over one forward + backward")
    print("| T | bias before (B,H,T,T) | bias after (1,H,T,T) | step before | step after | after/before | "
          "time before | time after |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    for length in args.lengths:
        figures = {}
        for variant in VARIANTS:
            command = [sys.executable, "-m", "benchmarks.alibi_memory", "--child", variant, "--lengths", str(length),
                       "--batch", str(args.batch), "--layers", str(args.layers)]
            result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
            if result.returncode:
                print(f"T={length} {variant}: failed\n{result.stderr[-2000:]}")
                return 1
            figures[variant] = json.loads(result.stdout.strip().splitlines()[-1])
        dense_bias_mb = args.batch * heads * length**2 * 4 / 2**20
        before, after = figures["dense"], figures["shared"]
        ratio = after["step_mb"] / before["step_mb"]
        print(f"| {length} | {dense_bias_mb:,.0f} MB | {dense_bias_mb / args.batch:,.0f} MB | "
              f"{before['step_mb']:,.0f} MB | {after['step_mb']:,.0f} MB | {ratio:.2f} | "
              f"{before['seconds']:.1f} s | {after['seconds']:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
