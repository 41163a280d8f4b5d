"""DNABERT-2 training-step throughput on one device: MultiMolecule's DnaBert2ForMaskedLM vs ours, levers switchable.

Synthetic BPE windows (the data path has its own benchmark), the same ones for every run; each step is forward,
backward and an AdamW step, under bf16 autocast on CUDA (float32 on a CPU):

(a) baseline: multimolecule's DnaBert2ForMaskedLM (sdpa attention with ALiBi as a dense bias), one window per
    row, the LM head and loss over every position: how DNABERT-2 is usually trained (run_mlm style);
(b) ours: dnabert.models.dnabert2, the LM head on masked positions only, packed rows (``--pack``; they only
    help when windows are shorter than the budget: ``--short-fraction``), ``--compile``, ``--attention flex``.

Reported: windows/s, real tokens/s, and MFU (dnabert.run.estimate's FLOPs of the real tokens / (time x dense
bf16 peak)), and ours/baseline.

    python -m benchmarks.dnabert2_model                                   # GPU: base, 128 tokens, micro-batch 256
    python -m benchmarks.dnabert2_model --compile --attention flex --pack --short-fraction 0.5
    python -m benchmarks.dnabert2_model --device cpu --preset tiny --micro-batch 16 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from dnabert.data.packing import place, plan_rows
from dnabert.data.tokenizers.special import CLS_ID as CLS
from dnabert.data.tokenizers.special import MASK_ID as MASK
from dnabert.data.tokenizers.special import NUM_SPECIAL_TOKENS as NUM_SPECIAL
from dnabert.data.tokenizers.special import PAD_ID as PAD
from dnabert.data.tokenizers.special import SEP_ID as SEP
from dnabert.models.components import IGNORE_INDEX, masked_lm_loss
from dnabert.models.dnabert2.model import DnaBert2ForMaskedLM, preset
from dnabert.run.estimate import peak_flops_for, train_flops_per_sequence

MASK_RATE = 0.15


def masked_windows(count: int, max_tokens: int, vocab: int, short_fraction: float, seed: int):
    """(input_ids, labels): [CLS] random ids [SEP] [PAD].., a ``short_fraction`` of uniformly shorter windows,
    15% of the inner tokens replaced by [MASK] (labels -100 elsewhere). The special ids are this project's (those
    every tokenizer here uses and our model's config defaults to), so padding and window starts mean the same to
    both models."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.full((count,), max_tokens)
    short = torch.rand(count, generator=generator) < short_fraction
    lengths[short] = torch.randint(8, max_tokens, (int(short.sum()),), generator=generator)
    columns = torch.arange(max_tokens)
    input_ids = torch.randint(NUM_SPECIAL, vocab, (count, max_tokens), generator=generator)
    input_ids[:, 0] = CLS
    input_ids[columns[None] == (lengths - 1)[:, None]] = SEP
    input_ids[columns[None] >= lengths[:, None]] = PAD
    masked = (torch.rand(input_ids.shape, generator=generator) < MASK_RATE) & (input_ids >= NUM_SPECIAL)
    return torch.where(masked, MASK, input_ids), torch.where(masked, input_ids, IGNORE_INDEX)


def timed(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    for index in range(warmup):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(steps):
        step(warmup + index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=256)
    parser.add_argument("--short-fraction", type=float, default=0.0, help="share of windows shorter than the budget")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pack", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "flex"))
    parser.add_argument("--runs", nargs="+", default=["baseline", "ours"], choices=("baseline", "ours"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    config = preset(args.preset, vocab_size=args.vocab_size, hidden_dropout_prob=0.0)
    batches = [masked_windows(args.micro_batch, args.max_tokens, args.vocab_size, args.short_fraction, seed)
               for seed in range(args.warmup + args.steps)]
    real_tokens = [int((ids != PAD).sum()) for ids, _ in batches[args.warmup:]]
    useful_flops = sum(train_flops_per_sequence(config, length, length**2, MASK_RATE)
                       for ids, _ in batches[args.warmup:] for length in (ids != PAD).sum(dim=1).tolist())
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    peak = peak_flops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    ours = DnaBert2ForMaskedLM(config, attention=args.attention).to(device)
    packed = []
    for input_ids, labels in batches:
        if args.pack:
            plan = plan_rows((input_ids != PAD).sum(dim=1).numpy(), row_tokens=args.max_tokens)
            input_ids, labels = place(input_ids, plan, PAD), place(labels, plan, IGNORE_INDEX)
        packed.append((input_ids.to(device), labels.to(device)))
    if args.compile:
        ours.compile(dynamic=True)
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=5e-4, fused=device.type == "cuda" or None)

    def ours_step(index: int) -> None:
        input_ids, labels = packed[index]
        masked = labels != IGNORE_INDEX
        with autocast:
            loss = masked_lm_loss(ours(input_ids, masked_positions=masked, packed=args.pack), labels[masked])
        loss.backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    steps = {"ours": ours_step}
    if "baseline" in args.runs:
        steps["baseline"] = baseline_stepper(config, batches, device, autocast)
    levers = (f"masked-only head, {'packed' if args.pack else 'unpacked'}, {args.attention}"
              f"{', compiled' if args.compile else ''}")
    print(f"DNABERT-2 {args.preset} (vocab {args.vocab_size}), {args.micro_batch} windows of <= {args.max_tokens} "
          f"tokens ({args.short_fraction:.0%} shorter), {args.steps} timed steps on {device}; ours: {levers}")
    print("| run | windows/s | real tok/s | MFU |\n|---|---:|---:|---:|")
    rates = {}
    for name in args.runs:
        seconds = timed(steps[name], args.warmup, args.steps, device)
        rates[name] = sum(real_tokens) / seconds
        mfu = f"{useful_flops / seconds / peak:.1%}" if peak else "n/a"
        print(f"| {name} | {args.micro_batch * args.steps / seconds:,.1f} | {rates[name]:,.0f} | {mfu} |")
    if len(rates) == 2:
        print(f"ours/baseline: {rates['ours'] / rates['baseline']:.2f}x real tokens/s")


def baseline_stepper(config: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                     autocast: contextlib.AbstractContextManager) -> Callable[[int], None]:
    """MultiMolecule's DnaBert2ForMaskedLM (head over every position, one window per row) and its training step.
    Built only when asked for: multimolecule is an optional extra of this project (AGPL)."""
    import multimolecule

    reference_config = multimolecule.DnaBert2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_dropout=0.0, pad_token_id=PAD, attn_implementation="sdpa",
    )
    baseline = multimolecule.DnaBert2ForMaskedLM(reference_config).to(device)
    optimizer = torch.optim.AdamW(baseline.parameters(), lr=5e-4)
    plain = [(input_ids.to(device), labels.to(device)) for input_ids, labels in batches]

    def baseline_step(index: int) -> None:
        input_ids, labels = plain[index]
        with autocast:
            loss = baseline(input_ids, attention_mask=(input_ids != PAD).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return baseline_step


if __name__ == "__main__":
    main()
