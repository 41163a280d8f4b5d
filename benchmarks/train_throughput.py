"""Training throughput of one device at the recipe's length mix: baseline vs ours, with every lever switchable.

Three measurements in one run, on the same real data stream (GenomeDataModule, length rule "original": about
half the windows full length, half shorter), masking on the device (dnabert.data.masking) in all three:

(a) baseline: transformers' BertForMaskedLM, eager attention, autocast, every row padded to max_tokens, the LM head
    (and loss) over all tokens, torch AdamW (for-each, not fused): how BERT MLM pretraining is usually written.
(b) ours through the real Lightning path: MaskedLMModule + GenomeDataModule in a Trainer with the project's
    progress bar, throughput logger, CSV logger, gradient clipping and NaN guard.
(c) ours in a raw torch loop (same model, data loader, levers and clipping): (b)'s framework overhead is 1 - b/c.

Reported: windows/s, real (non-padding) tokens/s, padding share of the computed tokens, MFU (model FLOPs of the
real tokens from dnabert.run.estimate / (time x the device's dense bf16 peak)), the ratios, and the wall time of the
paper recipe (120,000 steps x 2,000 windows) on 8 such devices, assuming linear scaling over data parallelism.

    python -m benchmarks.train_throughput                                   # GPU, BERT-base, all levers on
    python -m benchmarks.train_throughput --device cpu --preset tiny --steps 4 --micro-batch 8   # smoke run
    python -m benchmarks.train_throughput --no-pack --no-compile --no-fused --no-masked-head   # levers off
    python -m benchmarks.train_throughput --each-lever-off raw   # then (c) once per lever, that lever off
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.genome import GenomeSource
from dnabert.data.masking import mask_batch
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.models.dnabert.model import IGNORE_INDEX, DnaBertForMaskedLM, masked_lm_loss, preset
from dnabert.run.callbacks import StepProgressBar, ThroughputLogger
from dnabert.run.estimate import estimate, peak_flops_for
from dnabert.tasks.pretrain import MaskedLMModule, build_adamw

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_FASTA = ROOT / "data" / "genomes" / "human_chr22_20-21M.fa"
PAPER_WINDOWS = 120_000 * 2_000
PAPER_GPUS = 8
MASK_RATE = 0.15
LEVERS = ("pack", "compile", "fused", "masked_head", "bf16")  # the on/off switches of parse_args, as argparse dests
OPTIM = {"lr": 4e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01, "warmup_steps": 10, "total_steps": 10**6}


@dataclass
class Result:
    name: str
    windows_per_s: float
    tokens_per_s: float
    padding: float  # share of computed token slots that are [PAD]


class Counter:
    """Windows, real tokens and computed token slots of the timed steps; the clock starts after the warm-up."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.steps = self.windows = self.tokens = self.slots = 0
        self.start = self.stop = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_done(self, windows: int, tokens: int, slots: int) -> None:
        """Called after each micro-batch; synchronises the device only at the two clock reads."""
        self.steps += 1
        if self.steps == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        elif self.steps > self.warmup:
            self.windows, self.tokens, self.slots = self.windows + windows, self.tokens + tokens, self.slots + slots

    def result(self, name: str) -> Result:
        self._sync()
        self.stop = time.perf_counter()
        elapsed = self.stop - self.start
        return Result(name, self.windows / elapsed, self.tokens / elapsed, 1 - self.tokens / max(self.slots, 1))


def datamodule(args: argparse.Namespace, pack: bool) -> GenomeDataModule:
    packing = {"pack_rows": True} if pack else {}
    return GenomeDataModule(
        [GenomeSource("bench", args.fasta)], k=args.k, micro_batch_size=args.micro_batch, num_workers=args.workers,
        length_rule="original", max_tokens=args.max_tokens, val_fraction=0.01, cache_dir=args.cache_dir,
        pin_memory=args.device.type == "cuda", **packing,
    )


def device_batches(data: GenomeDataModule, device: torch.device, k: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(masked ids, labels, windows, real tokens) on the device; counts come from the CPU side (no sync)."""
    data.setup()
    generator = torch.Generator(device=device).manual_seed(0)
    for batch in data.train_dataloader():
        input_ids = batch["input_ids"]
        tokens = int((input_ids != PAD_ID).sum())
        input_ids = input_ids.to(device, non_blocking=True)
        masked_ids, labels = mask_batch(input_ids, k, MASK_RATE, generator)
        yield masked_ids, labels, batch["window"].shape[0], tokens


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    return torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=args.bf16)


def timed_loop(args: argparse.Namespace, name: str, pack: bool,
               train_step: Callable[[torch.Tensor, torch.Tensor], int]) -> Result:
    """Run `train_step` (which returns the token slots it computed) over the real stream, warm-up untimed."""
    counter = Counter(args.warmup, args.device)
    batches = device_batches(datamodule(args, pack), args.device, args.k)
    for _ in range(args.warmup + args.steps):
        input_ids, labels, windows, tokens = next(batches)
        counter.step_done(windows, tokens, train_step(input_ids, labels))
    return counter.result(name)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_baseline(args: argparse.Namespace) -> Result:
    from transformers import BertForMaskedLM

    model = BertForMaskedLM._from_config(preset(args.preset, args.k).to_hf_config(), attn_implementation="eager")
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=OPTIM["lr"], betas=tuple(OPTIM["betas"]), eps=OPTIM["eps"],
                                  weight_decay=OPTIM["weight_decay"])

    def step(input_ids: torch.Tensor, labels: torch.Tensor) -> int:
        pad = args.max_tokens - input_ids.shape[1]  # every row padded to the maximum length
        input_ids = torch.nn.functional.pad(input_ids, (0, pad), value=PAD_ID)
        labels = torch.nn.functional.pad(labels, (0, pad), value=IGNORE_INDEX)
        with autocast(args):
            loss = model(input_ids=input_ids, attention_mask=input_ids != PAD_ID, labels=labels).loss
        loss.backward()
        optimizer_step(model, optimizer)
        return input_ids.numel()

    return timed_loop(args, "(a) baseline: HF BertForMaskedLM, eager, padded", False, step)


def our_model(args: argparse.Namespace) -> DnaBertForMaskedLM:
    model = DnaBertForMaskedLM(preset(args.preset, args.k), attention=args.attention).to(args.device).train()
    if args.compile:
        model.compile(dynamic=True)
    return model


def run_raw(args: argparse.Namespace) -> Result:
    model = our_model(args)
    optimizer = build_adamw(model, {**OPTIM, "fused": args.fused})  # the LightningModule's own optimiser

    micro_batches = 0

    def step(input_ids: torch.Tensor, labels: torch.Tensor) -> int:
        nonlocal micro_batches
        masked = labels != IGNORE_INDEX
        with autocast(args):
            logits = model(input_ids, masked_positions=masked, packed=args.pack,
                           head_on_masked_only=args.masked_head)
        (masked_lm_loss(logits, labels[masked]) / args.accumulate).backward()
        micro_batches += 1
        if micro_batches % args.accumulate == 0:
            optimizer_step(model, optimizer)
        return input_ids.numel()

    return timed_loop(args, "(c) ours, raw torch loop", args.pack, step)


class LightningCounter(L.Callback):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.counter.step_done(batch["window"].shape[0], batch["num_tokens"], batch["input_ids"].numel())


def run_lightning(args: argparse.Namespace) -> Result:
    config = preset(args.preset, args.k)
    module = MaskedLMModule(
        k=args.k, model_config=config.to_dict(), masking={"rate": MASK_RATE, "final_rate": 0.2},
        optim={**OPTIM, "fused": args.fused}, packed=args.pack, compile_model=args.compile, attention=args.attention,
        head_on_masked_only=args.masked_head,
    )
    counter = Counter(args.warmup, args.device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = L.Trainer(
            accelerator=args.device.type, devices=1, precision="bf16-mixed" if args.bf16 else "32-true",
            max_steps=(args.warmup + args.steps) // args.accumulate, accumulate_grad_batches=args.accumulate,
            gradient_clip_val=1.0, log_every_n_steps=50,
            logger=CSVLogger(run_dir, name="csv"), enable_checkpointing=False, num_sanity_val_steps=0,
            limit_val_batches=0, use_distributed_sampler=False, enable_model_summary=False,
            callbacks=[StepProgressBar(), ThroughputLogger(), LightningCounter(counter)], default_root_dir=run_dir,
        )
        trainer.fit(module, datamodule=datamodule(args, args.pack))
    return counter.result("(b) ours, Lightning Trainer")


def flops_per_real_token(args: argparse.Namespace) -> float:
    """Model FLOPs (forward + backward) per real token at the recipe's length mix, from dnabert.run.estimate."""
    return estimate(preset(args.preset, args.k), k=args.k, max_tokens=args.max_tokens, global_batch_size=1,
                    max_steps=1, micro_batch_size=1, devices=1, num_nodes=1, length_rule="original",
                    mask_rate=MASK_RATE).train_flops_per_token


def print_header(args: argparse.Namespace) -> None:
    print(f"\n# train throughput, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {device_name(args)}, torch "
          f"{torch.__version__}, preset {args.preset}, k={args.k}, max_tokens {args.max_tokens}, micro-batch "
          f"{args.micro_batch} windows, {args.steps} timed micro-batches after {args.warmup}, accumulation "
          f"{args.accumulate}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    print(f"# ours: packing {'on' if args.pack else 'off'}, compile {'on' if args.compile else 'off'}, attention "
          f"{args.attention}, fused AdamW {'on' if args.fused else 'off'}, "
          f"head {'masked positions only' if args.masked_head else 'all tokens'}; {args.workers} loader workers")
    print(f"{'run':<50}{'windows/s':>11}{'real tok/s':>13}{'padding':>9}{'MFU':>8}", flush=True)


def device_name(args: argparse.Namespace) -> str:
    return torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"


def print_row(args: argparse.Namespace, result: Result) -> None:
    """One row as soon as its run ends, so a run stopped at a time budget keeps the rows it finished."""
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and args.device.type == "cuda":
        peak = peak_flops_for(device_name(args))
    mfu = f"{result.tokens_per_s * flops_per_real_token(args) / peak:.1%}" if peak else "n/a"
    print(f"{result.name:<50}{result.windows_per_s:>11,.1f}{result.tokens_per_s:>13,.0f}"
          f"{result.padding:>9.1%}{mfu:>8}", flush=True)


def print_ratios(args: argparse.Namespace, results: list[Result]) -> None:
    by_tag = {result.name[:3]: result for result in results}
    baseline, lightning, raw = by_tag.get("(a)"), by_tag.get("(b)"), by_tag.get("(c)")
    if baseline and lightning:
        print(f"ours (Lightning) / baseline, real tokens/s: {lightning.tokens_per_s / baseline.tokens_per_s:.2f}x")
    if lightning and raw:
        print(f"lost to Lightning, logging and data loading vs the raw loop: "
              f"{1 - lightning.tokens_per_s / raw.tokens_per_s:.1%}")
    for result in results:
        hours = PAPER_WINDOWS / (PAPER_GPUS * result.windows_per_s) / 3600
        print(f"paper recipe (120k steps x 2000 windows) on {PAPER_GPUS} x {device_name(args)}, "
              f"{result.name[:3]}: {hours:,.1f} h")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if on_gpu else "cpu")
    parser.add_argument("--preset", default="bert_base", help="model size: tiny, small, bert_base")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=128, help="windows per micro-batch")
    parser.add_argument("--steps", type=int, default=30, help="timed micro-batches")
    parser.add_argument("--warmup", type=int, default=6, help="untimed micro-batches first (compile, workers)")
    parser.add_argument("--accumulate", type=int, default=1,
                        help="micro-batches per optimiser step in (b) and (c) (the baseline steps every micro-batch)")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers")
    parser.add_argument("--fasta", type=Path, default=BUNDLED_FASTA)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "dnabert_bench_cache")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    parser.add_argument("--runs", nargs="+", default=["baseline", "lightning", "raw"],
                        choices=["baseline", "lightning", "raw"])
    switch = argparse.BooleanOptionalAction
    parser.add_argument("--pack", action=switch, default=True, help="several windows per row (else one per row)")
    parser.add_argument("--compile", action=switch, default=None, help="torch.compile (default: on GPU only)")
    parser.add_argument("--fused", action=switch, default=True, help="fused AdamW on GPU (else for-each)")
    parser.add_argument("--masked-head", action=switch, default=True, help="LM head on masked positions only")
    parser.add_argument("--bf16", action=switch, default=None, help="bf16 autocast (default: on GPU only)")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "flex"),
                        help="flex needs attention dropout 0 (the bert_base preset has 0.1)")
    parser.add_argument("--each-lever-off", nargs="*", default=[], choices=["baseline", "lightning", "raw"],
                        help="after --runs, repeat these runs once per lever that is on, with that lever off")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    # CPU defaults: fp32 (bf16 matmuls are slow on most CPUs), no compile (30-80 s, no gain for small models)
    on_gpu = args.device.type == "cuda"
    args.compile = on_gpu if args.compile is None else args.compile
    args.bf16 = on_gpu if args.bf16 is None else args.bf16
    args.fused = args.fused and on_gpu  # fused AdamW is CUDA-only (build_adamw): no lever to switch off on a CPU
    if args.steps % args.accumulate or args.warmup % args.accumulate:
        parser.error("--steps and --warmup must be multiples of --accumulate")
    if not set(args.each_lever_off) <= set(args.runs):
        parser.error("--each-lever-off compares with the runs of --runs: name only runs that --runs has")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    runners = {"baseline": run_baseline, "lightning": run_lightning, "raw": run_raw}
    print_header(args)
    results = {}
    for name in args.runs:
        results[name] = runners[name](args)
        print_row(args, results[name])
    print_ratios(args, list(results.values()))
    for lever in (lever for lever in LEVERS if getattr(args, lever)):
        for name in args.each_lever_off:
            result = runners[name](argparse.Namespace(**{**vars(args), lever: False}))
            speed = result.tokens_per_s / results[name].tokens_per_s
            result.name = f"{result.name[:3]} {lever.replace('_', '-')} off ({speed:.2f}x all levers on)"
            print_row(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
