"""Model families, one folder each; `build_model` is the one place a run's `model.family` picks the code.

- dnabert:  BERT over overlapping k-mers (dnabert.models.dnabert.model.DnaBertForMaskedLM)
- dnabert2: MosaicBERT over BPE tokens: ALiBi, gated linear units (dnabert.models.dnabert2.model.DnaBert2ForMaskedLM)

Every family's masked-LM class takes `(config, attention=...)` and has the same `forward(input_ids,
attention_mask=None, position_ids=None, masked_positions=None, packed=False, head_on_masked_only=True)`, and its
config dataclass has `from_dict`/`to_dict` and `vocab_size`; tasks, export and fine-tuning only rely on that.
A family's module is imported when a run asks for it (a k-mer run never imports the other family).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from dnabert.errors import DnabertError

# family -> (module, config class, masked-LM class)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "dnabert": ("dnabert.models.dnabert.model", "ModelConfig", "DnaBertForMaskedLM"),
    "dnabert2": ("dnabert.models.dnabert2.model", "DnaBert2Config", "DnaBert2ForMaskedLM"),
}
DEFAULT_FAMILY = "dnabert"


def family_classes(family: str) -> tuple[type, type[torch.nn.Module]]:
    """(config class, masked-LM class) of a family; an unknown name is a config mistake."""
    if family not in FAMILIES:
        raise DnabertError(f"model.family={family!r} is unknown; use one of {', '.join(FAMILIES)}.")
    module_name, config_name, model_name = FAMILIES[family]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, model_name)


def build_model(family: str, config: Mapping[str, Any], attention: str = "sdpa") -> torch.nn.Module:
    """The masked-LM model of `family` from a plain config dict (Hydra's `model` group minus run switches)."""
    config_class, model_class = family_classes(family)
    return model_class(config_class.from_dict(dict(config)), attention=attention)
