"""Values derived from the config (accumulation, mask switch step, vocab size, precision) and their checks.

They are OmegaConf resolvers so that `python train.py ... --cfg job --resolve` shows the derived numbers, and
the same functions are called at start, where a mistake becomes one clear DnabertError.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dnabert.data.tokenizers.kmer import vocab_size
from dnabert.errors import DnabertError


def declared_device_count(accelerator: str, devices: int | str) -> int:
    """How many processes per node `trainer.devices` asks for ("auto": the visible GPUs, or 1 on CPU)."""
    if devices in ("auto", -1, "-1"):
        gpus_visible = torch.cuda.device_count()
        return gpus_visible if accelerator in ("gpu", "cuda", "auto") and gpus_visible else 1
    try:
        return int(devices)
    except (TypeError, ValueError) as err:
        raise DnabertError(f"trainer.devices={devices!r}: give a number of devices per node, e.g. 8.") from err


def resolve_device_count(accelerator: str, devices: int | str) -> int:
    """The declared device count, checked against this machine: fails clearly when it has fewer."""
    count = declared_device_count(accelerator, devices)
    gpus_visible = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and gpus_visible == 0:
        raise DnabertError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda is not None}). Run on a GPU node with a CUDA build of torch "
            "(see docs/guide/install.md), or use trainer=cpu."
        )
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus_visible > 0)
    available = gpus_visible if wants_gpu else (os.cpu_count() or 1)
    kind = "GPUs" if wants_gpu else "CPU cores"
    if count < 1 or count > available:
        raise DnabertError(
            f"trainer.devices={count} but this machine has {available} {kind}. "
            f"Set trainer.devices to at most {available}."
        )
    return count


def accumulation_steps(global_batch_size: int, micro_batch_size: int, devices: int, num_nodes: int) -> int:
    """Gradient accumulation that makes micro x accumulation x devices x nodes equal the global batch."""
    per_pass = micro_batch_size * devices * num_nodes
    if min(global_batch_size, micro_batch_size, devices, num_nodes) < 1 or global_batch_size % per_pass:
        raise DnabertError(
            f"global_batch_size={global_batch_size} is not a multiple of data.micro_batch_size "
            f"({micro_batch_size}) x trainer.devices ({devices}) x trainer.num_nodes ({num_nodes}) = {per_pass}. "
            "Change one of them so the product divides the global batch."
        )
    return global_batch_size // per_pass


def mask_switch_step(max_steps: int, final_rate_steps: int) -> int:
    """The optimiser step from which the final (higher) mask rate applies: the last `final_rate_steps` steps."""
    if final_rate_steps < 0 or final_rate_steps > max_steps:
        raise DnabertError(
            f"masking.final_rate_steps={final_rate_steps} must lie between 0 and max_steps={max_steps}."
        )
    return max_steps - final_rate_steps


def runs_on_gpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts this process on a GPU of this machine."""
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def auto_precision(precision: str, accelerator: str) -> str:
    """'auto' means bf16-mixed on GPUs that support it, fp16-mixed on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if not runs_on_gpu(accelerator):
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _accumulation_resolver(global_batch: int, micro: int, accelerator: str, devices, num_nodes: int) -> int:
    return accumulation_steps(int(global_batch), int(micro), declared_device_count(accelerator, devices),
                              int(num_nodes))


def _wandb_run_id_resolver(run_dir: str) -> str:
    from dnabert.run.cluster import wandb_run_id  # imported when used: cluster pulls in lightning

    return wandb_run_id(run_dir)


def backbone_name(pretrained: object) -> str:
    """A fine-tuning run's default name from its backbone: `none`; `demo-default` for the run directory
    outputs/demo/default; `demo-default-step-0000400` for one of its checkpoints; `<parent>-<name>` for a model
    folder."""
    if pretrained is None or str(pretrained).lower() == "none":
        return "none"
    path = Path(str(pretrained)).resolve()
    if path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return f"{run_dir.parent.name}-{run_dir.name}-{path.stem}"
    return f"{path.parent.name}-{path.name}"


def suite_job_dir(suite_dir: str, pair: int | None) -> str:
    """suite.py's run directory: the suite's folder, or for one job of a sweep (`pair=`) its own folder in it, so
    that each job claims a directory of its own (dnabert.run.run_claim)."""
    return suite_dir if pair is None else f"{suite_dir}/multirun/pair-{pair}"


def register_resolvers() -> None:
    """Make the derived values usable in YAML: ${vocab_size:${k}}, ${accumulation:...}, ${mask_switch:...}."""
    resolvers = {
        "vocab_size": lambda k: vocab_size(int(k)),
        "accumulation": _accumulation_resolver,
        "mask_switch": lambda max_steps, final: mask_switch_step(int(max_steps), int(final)),
        "precision": auto_precision,
        "wandb_run_id": _wandb_run_id_resolver,
        "backbone_name": backbone_name,
        "suite_job_dir": suite_job_dir,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
