"""LoRA adapters for fine-tuning (`adapter=lora`), through peft.

The adapter goes into the encoder only: `classifier.backbone` becomes a peft model whose target layers carry the
low-rank matrices and whose own weights are frozen, while the head (pooler + classifier, outside the encoder)
trains fully. The targets are the family's (`ModelFamily.lora_targets`) unless `lora.target_modules` names
others, and each must match a layer that exists: a target that matches nothing would otherwise adapt nothing, or
fail inside peft after the data is loaded.

A seed folder's `adapter/` is what the run produced beyond the backbone: peft's `adapter_model.safetensors` and
`adapter_config.json`, the head's weights (`head.safetensors`) and `classifier.json` (backbone, labels, task
type). `load_adapter` puts it back onto a classifier built on the same backbone; `merged` folds it into the
weights (W + B A alpha/r) for exports that must load without peft. The Lightning checkpoints keep the whole
classifier (the frozen backbone too), so resume and `python -m dnabert.tools.export <ckpt>` need nothing else.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn

from dnabert.errors import DnabertError
from dnabert.models import get_family
from dnabert.models.family import ModelFamily
from dnabert.models.interop import load_strict, write_replacing
from dnabert.tasks.finetune import SequenceClassifier

ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
DESCRIPTION_FILE = "classifier.json"
HEAD_PREFIXES = ("pooler.", "classifier.")
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the layer types peft's LoRA wraps


def lora_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The run's LoRA settings (`adapter=lora`, the `lora` block), or None for `adapter=none`; target_modules stays
    None for the family's default until `add_lora` resolves it."""
    if cfg.adapter == "none":
        return None
    targets = cfg.lora.target_modules
    return {"r": int(cfg.lora.r), "alpha": float(cfg.lora.alpha), "dropout": float(cfg.lora.dropout),
            "target_modules": None if targets is None else [str(target) for target in targets]}


def adaptable_layers(encoder: nn.Module) -> list[str]:
    """The full names of the encoder's layers LoRA can adapt."""
    return [name for name, module in encoder.named_modules() if isinstance(module, ADAPTABLE)]


def resolve_targets(encoder: nn.Module, family: ModelFamily, configured: list[str] | None) -> list[str]:
    """`configured`, or the family's default, each checked to match a layer peft can adapt (by its full name or a
    dotted suffix, as peft matches); a target that matches none is one error naming the layers there are."""
    layers = adaptable_layers(encoder)
    last_names = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in layers))
    default = list(family.lora_targets) if family.lora_targets is not None else [
        name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, nn.Linear)]
    targets = list(configured) if configured else list(dict.fromkeys(default))
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in layers):
            raise DnabertError(
                f"lora.target_modules: {target!r} matches no layer of the {family.label} encoder that LoRA can "
                f"adapt; its layers are named {', '.join(last_names)} (a dotted suffix such as "
                f"{_example_suffix(layers)} picks fewer); or set lora.target_modules=null for the family's default "
                f"[{','.join(default)}]."
            )
    return targets


def _example_suffix(layers: list[str]) -> str:
    """The last of the deepest layers, by its last two names (`output.dense`)."""
    deepest = max(reversed(layers), key=lambda name: name.count("."), default="")
    return ".".join(deepest.split(".")[-2:])


def add_lora(classifier: SequenceClassifier, family_name: str, settings: dict[str, Any]) -> None:
    """Wrap the classifier's encoder in a peft LoRA model (its weights frozen; the adapter's initialised from the
    global RNG); the head stays trainable."""
    from peft import LoraConfig, get_peft_model  # imported here: a run without an adapter never loads peft

    targets = resolve_targets(classifier.backbone, get_family(family_name), settings["target_modules"])
    config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=targets)
    classifier.backbone = get_peft_model(classifier.backbone, config)


def adapter_settings(classifier: SequenceClassifier) -> dict[str, Any] | None:
    """The LoRA settings a classifier carries, targets resolved (None: no adapter): what a checkpoint stores to
    rebuild the same model for resume and export."""
    config = getattr(classifier.backbone, "peft_config", {}).get("default")
    if config is None:
        return None
    return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules)}


def parameter_counts(classifier: nn.Module) -> dict[str, int]:
    """Trainable and all parameters (a LoRA classifier: the adapter and the head of the whole)."""
    return {"trainable": sum(p.numel() for p in classifier.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in classifier.parameters())}


def head_state(classifier: SequenceClassifier) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in classifier.state_dict().items()
            if key.startswith(HEAD_PREFIXES)}


def save_adapter(classifier: SequenceClassifier, out_dir: Path, description: dict[str, Any]) -> Path:
    """Write `adapter/`: peft's adapter files, the head and `description` (backbone, labels); replaces an earlier
    one."""

    def write(staging: Path) -> None:
        classifier.backbone.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's template card, empty but for placeholders
        save_file(head_state(classifier), staging / HEAD_FILE)
        (staging / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")

    return write_replacing(Path(out_dir), write)


def load_adapter(classifier: SequenceClassifier, adapter_dir: str | Path) -> SequenceClassifier:
    """Put a saved `adapter/` onto a classifier built on the backbone it was trained on (`build_classifier` of
    the same `pretrained=`, any seed): the adapter into its encoder, the head's weights into its head."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise DnabertError(f"{adapter_dir} has no adapter_config.json; point it at a seed's adapter/ folder.")
    classifier.backbone = PeftModel.from_pretrained(classifier.backbone, adapter_dir)
    head = load_file(adapter_dir / HEAD_FILE)
    state = {**{key: value for key, value in classifier.state_dict().items() if not key.startswith(HEAD_PREFIXES)},
             **head}
    load_strict(classifier, state, str(adapter_dir / HEAD_FILE))
    return classifier


def merged(classifier: SequenceClassifier) -> SequenceClassifier:
    """A copy whose encoder is the plain family module with the adapter folded into its weights, for the exports
    (hf_model/): they load without peft and give the adapted model's outputs."""
    plain = copy.deepcopy(classifier)
    plain.backbone = plain.backbone.merge_and_unload()
    return plain
