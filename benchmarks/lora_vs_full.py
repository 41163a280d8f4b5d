"""LoRA adapters against full fine-tuning on the bundled promoter task: trainable parameters, what a seed saves,
wall and CPU time, test MCC over seeds.

Each variant is one `python finetune.py` run (all seeds, one after another, 3 epochs, the defaults of
configs/finetune.yaml) in a fresh subprocess on the same backbone; the CPU time is the subprocess's user + system
time, which another job on the machine inflates less than the wall time. "saved" is what a seed needs beyond the
backbone: the whole exported model (hf_model/model.safetensors) for full fine-tuning, the adapter folder
(adapter weights + head) for LoRA. The ratios are LoRA's over full fine-tuning's.

    python train.py experiment=demo                                     # the backbone (a few minutes on a CPU)
    python -m benchmarks.lora_vs_full --pretrained outputs/demo/default
    python -m benchmarks.lora_vs_full --pretrained outputs/demo/default --seeds 1 2 3 --lora-lr 1e-3

Last, one training step of each, timed alternately in one process: the time ratio that a loaded machine disturbs
least (the runs' wall and CPU times move with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_variant(name: str, overrides: list[str], pretrained: str, seeds: list[int], out: Path) -> dict:
    """One finetune.py run; its wall and CPU seconds and its results.json."""
    command = [sys.executable, str(ROOT / "finetune.py"), f"pretrained={pretrained}",
               f"seeds=[{','.join(map(str, seeds))}]", f"run_name={name}", f"paths.output_root={out}", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        sys.exit(f"{name} failed ({' '.join(command)}):\n{finished.stderr[-3000:]}")
    run_dir = next(out.glob(f"*/{name}"))
    results = json.loads((run_dir / "results.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"name": name, "overrides": overrides, "wall_s": wall, "cpu_s": cpu, "run_dir": run_dir,
            "results": results, "saved_bytes": saved_bytes(run_dir / f"seed_{seeds[0]}")}


def saved_bytes(seed_dir: Path) -> int:
    """The adapter folder of a LoRA seed, else the exported model's weights."""
    adapter = seed_dir / "adapter"
    if adapter.is_dir():
        return sum(path.stat().st_size for path in adapter.iterdir() if path.suffix in (".safetensors", ".json"))
    return (seed_dir / "hf_model" / "model.safetensors").stat().st_size


def summary(variant: dict) -> dict:
    results = variant["results"]
    test_mcc = [seed["metrics"]["test"]["mcc"] for seed in results["seeds"]]
    return {"trainable": results["seeds"][0]["parameters"]["trainable"],
            "total": results["seeds"][0]["parameters"]["total"],
            "mcc_mean": statistics.fmean(test_mcc), "mcc_sd": statistics.stdev(test_mcc) if len(test_mcc) > 1 else 0.0,
            "mcc": test_mcc}


def table(variants: list[dict]) -> str:
    full = summary(variants[0])
    lines = ["| variant | trainable parameters | saved per seed | wall | CPU | test MCC (mean ± sd) | per seed |",
             "|---|---:|---:|---:|---:|---|---|"]
    for variant in variants:
        row = summary(variant)

        def vs(value: float, reference: float, variant: dict = variant) -> str:
            """The ratio to full fine-tuning, on the other rows."""
            return f" ({value / reference:.3g}x)" if variant is not variants[0] else ""

        lines.append(
            f"| {variant['name']} ({' '.join(variant['overrides']) or 'defaults'}) "
            f"| {row['trainable']:,} of {row['total']:,}{vs(row['trainable'], full['trainable'])} "
            f"| {variant['saved_bytes'] / 1e6:.3f} MB{vs(variant['saved_bytes'], variants[0]['saved_bytes'])} "
            f"| {variant['wall_s']:.0f} s{vs(variant['wall_s'], variants[0]['wall_s'])} "
            f"| {variant['cpu_s']:.0f} s{vs(variant['cpu_s'], variants[0]['cpu_s'])} "
            f"| {row['mcc_mean']:.3f} ± {row['mcc_sd']:.3f} | {', '.join(f'{m:.3f}' for m in row['mcc'])} |")
    return "\n".join(lines)


def interleaved_step_ratio(pretrained: str, steps: int) -> tuple[float, float]:
    """Median seconds of one training step (forward, backward, AdamW; batch 32 of the task's 70 bp sequences) of
    full fine-tuning and of LoRA, measured alternately in one process so that another job's load hits both alike."""
    from dnabert.run.finetuning import build_classifier, resolve_backbone
    from dnabert.tasks.pretrain import build_adamw

    backbone = resolve_backbone(pretrained, None, {})
    settings = {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": None}
    optim = {"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "fused": False}
    models = [build_classifier(backbone, 2, 0, 0.1, adapter).train() for adapter in (None, settings)]
    optimizers = [build_adamw(model, optim) for model in models]
    input_ids = torch.randint(5, backbone.config["vocab_size"], (32, 67))
    labels = torch.randint(0, 2, (32,))
    times: list[list[float]] = [[], []]
    for step in range(steps + 2):  # the first two of each warm up
        for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(input_ids, torch.arange(32), 32), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 2:
                times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="the backbone: a run directory, .ckpt or model folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lora-lr", type=float, default=1e-3,
                        help="a second LoRA run at this learning rate (LoRA usually wants a higher one); 0: none")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each, interleaved, for the ratio")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lora_vs_full."))
    full_step, lora_step = interleaved_step_ratio(args.pretrained, args.steps)
    step_line = (f"one training step (batch 32, interleaved, median of {args.steps}): full {full_step * 1e3:.1f} ms, "
                 f"LoRA {lora_step * 1e3:.1f} ms ({lora_step / full_step:.2f}x)")
    print(step_line, file=sys.stderr, flush=True)
    variants = [("full", []), ("lora", ["adapter=lora"])]
    if args.lora_lr:
        variants.append(("lora_lr", ["adapter=lora", f"optim.lr={args.lora_lr:g}"]))
    measured = []
    for name, overrides in variants:
        measured.append(run_variant(name, overrides, args.pretrained, args.seeds, out))
        print(f"{name}: {measured[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"backbone {args.pretrained}, task prom_core, seeds {args.seeds}, 3 epochs; torch {torch.__version__}, "
          f"{platform.machine()} {platform.processor() or ''}, runs in {out}")
    print(table(measured))
    print(step_line)


if __name__ == "__main__":
    main()
