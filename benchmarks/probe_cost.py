"""What the downstream probe (dnabert/run/probe.py) costs as a share of training time.

Measured on this machine for one model size: the probe's embedding throughput (its forward pass over the bundled
task's sequences, in eval mode, as the callback runs it), the logistic regression fit on features of that width,
and the training throughput (forward + backward + AdamW) at the run's window length. The share is then

    probe seconds per validation / (val_every_n_steps x global batch x window tokens / training tokens per second)

so it transfers to faster hardware as long as embedding and training speed up alike (both are the same matrix
products; the logistic regression runs on the CPU in either case and is reported separately).

    python -m benchmarks.probe_cost --preset tiny --train-tokens 64 --global-batch 32 --val-every 100   # the demo
    python -m benchmarks.probe_cost --preset bert_base --train-tokens 512 --global-batch 2000 --val-every 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dnabert.data.masking import mask_batch
from dnabert.data.tokenizers.kmer import vocab_size
from dnabert.models.dnabert.model import IGNORE_INDEX, DnaBertForMaskedLM, masked_lm_loss, preset
from dnabert.run.probe import DownstreamProbe
from dnabert.tasks.pretrain import build_adamw

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "data" / "tasks" / "prom_core.tsv"
OPTIM = {"lr": 1e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01}


class ModuleStandIn:
    """What the probe reads of the LightningModule."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.device = model, torch.device("cpu")


def best_of(repeats: int, work) -> float:
    """Fastest of `repeats` timings: other processes on a shared machine only ever slow a round down."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "bert_base"))
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--probe-sequences", type=int, default=1000, help="probe.max_sequences")
    parser.add_argument("--measure-sequences", type=int, default=256,
                        help="sequences embedded per timing (throughput is extrapolated to --probe-sequences)")
    parser.add_argument("--train-tokens", type=int, default=64, help="tokens per training window")
    parser.add_argument("--micro-batch", type=int, default=16, help="windows per measured training step")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--val-every", type=int, default=100, help="trainer.val_every_n_steps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DnaBertForMaskedLM(preset(args.preset, args.k))
    module = ModuleStandIn(model)

    probe = DownstreamProbe(str(TASK), k=args.k, max_sequences=args.measure_sequences, batch_size=64)
    probe.setup(None, module, "fit")
    tokens_embedded = sum(int((batch["input_ids"] != 0).sum()) for batch in probe.loader)
    embed_seconds = best_of(args.repeats, lambda: probe.embed(module))
    embed_tokens_per_s = tokens_embedded / embed_seconds
    full_probe = DownstreamProbe(str(TASK), k=args.k, max_sequences=args.probe_sequences)
    features = np.random.default_rng(0).normal(size=(len(full_probe.data), model.config.hidden_size))
    fit_seconds = best_of(args.repeats, lambda: full_probe.score(features))
    probe_tokens = tokens_embedded / args.measure_sequences * len(full_probe.data)
    probe_seconds = probe_tokens / embed_tokens_per_s + fit_seconds

    model.train()
    optimizer = build_adamw(model, OPTIM)
    input_ids = torch.randint(5, vocab_size(args.k), (args.micro_batch, args.train_tokens))
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        masked_ids, labels = mask_batch(input_ids, args.k, 0.15, generator)
        masked = labels != IGNORE_INDEX
        masked_lm_loss(model(masked_ids, masked_positions=masked), labels[masked]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()  # warm-up
    train_tokens_per_s = args.micro_batch * args.train_tokens / best_of(args.repeats, train_step)
    interval_seconds = args.val_every * args.global_batch * args.train_tokens / train_tokens_per_s
    print(f"model {args.preset} (hidden {model.config.hidden_size}), k={args.k}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"probe embedding: {embed_tokens_per_s:,.0f} tokens/s; {len(full_probe.data)} sequences = "
          f"{probe_tokens:,.0f} tokens -> {probe_tokens / embed_tokens_per_s:.3f} s")
    print(f"probe logistic regression (fit + score, {model.config.hidden_size} features): {fit_seconds:.3f} s")
    print(f"training: {train_tokens_per_s:,.0f} tokens/s at {args.train_tokens}-token windows; "
          f"{args.val_every} steps x {args.global_batch} windows between validations = {interval_seconds:,.1f} s")
    print(f"probe share of training time: {probe_seconds / (interval_seconds + probe_seconds):.4%} "
          f"({probe_seconds:.2f} s per validation)")


if __name__ == "__main__":
    main()
