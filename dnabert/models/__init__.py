"""Model families, one folder each, registered here: `get_family(model.family)` is the one place a run's
`model.family` picks the code.

- dnabert:  BERT over overlapping k-mers (dnabert.models.dnabert)
- dnabert2: MosaicBERT over BPE tokens: ALiBi, gated linear units (dnabert.models.dnabert2)

A family is the `FAMILY` object of its package (a `dnabert.models.family.ModelFamily`). A family that lives
outside this package is named by the import path of its object, `model.family=my_pkg.my_family:FAMILY`, which
any process (a DDP rank, the export CLI reading a checkpoint) resolves the same way; `register_family` adds one
under its own name for code that imports it first.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from dnabert.errors import DnabertError
from dnabert.models.dnabert import FAMILY as DNABERT
from dnabert.models.dnabert2 import FAMILY as DNABERT2
from dnabert.models.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {DNABERT.name: DNABERT, DNABERT2.name: DNABERT2}
DEFAULT_FAMILY = DNABERT.name


def register_family(family: ModelFamily) -> None:
    """Make `family` available as `model.family=<family.name>` in this process."""
    FAMILIES[family.name] = family


def get_family(name: str) -> ModelFamily:
    """The family a `model.family` value names: a registered name, or `module.path:OBJECT` (imported, then
    registered under that string). Anything else is a config mistake."""
    if name in FAMILIES:
        return FAMILIES[name]
    module_name, _, attribute = str(name).partition(":")
    if attribute:
        try:
            family = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise DnabertError(f"model.family={name!r} cannot be imported ({err}); name a registered family "
                               f"({', '.join(FAMILIES)}) or an importable object, module.path:FAMILY.") from err
        if not isinstance(family, ModelFamily):
            raise DnabertError(f"model.family={name!r} is a {type(family).__name__}, not a "
                               "dnabert.models.family.ModelFamily.")
        FAMILIES[name] = family
        return family
    raise DnabertError(f"model.family={name!r} is unknown; use one of {', '.join(FAMILIES)}, or module.path:FAMILY "
                       "for a family outside dnabert.")


def _fallback_last(families: list[ModelFamily]) -> list[ModelFamily]:
    return sorted(families, key=lambda family: family.directory_fallback)


def family_of_config(config: Any) -> ModelFamily:
    """The family a model config object belongs to (ours, or transformers'/MultiMolecule's)."""
    for family in _fallback_last(list(FAMILIES.values())):
        if family.owns_config(config):
            return family
    raise DnabertError(f"No model family knows the config {type(config).__name__}.")


def family_of_directory(config_json: dict[str, Any]) -> ModelFamily | None:
    """The family of a saved model directory by its config.json: the one that recognises it, else the fallback
    family (transformers' BERT), else None."""
    families = _fallback_last(list(FAMILIES.values()))
    for family in families:
        if family.recognises_directory(config_json) or family.directory_fallback:
            return family
    return None


def family_of_checkpoint(hyper_parameters: Mapping[str, Any]) -> str:
    """The `model.family` of a pretraining checkpoint's hyper-parameters; one written before the family was
    saved is told apart by its config (DNABERT-2's has `alibi_starting_size`)."""
    if "family" in hyper_parameters:
        return str(hyper_parameters["family"])
    model_config = hyper_parameters.get("model_config") or {}
    return DNABERT2.name if "alibi_starting_size" in model_config else DEFAULT_FAMILY


def build_model(family: str, config: Mapping[str, Any], attention: str = "sdpa") -> torch.nn.Module:
    """The masked-LM model of `family` from a plain config dict (Hydra's `model` group minus run switches)."""
    return get_family(family).build(dict(config), attention=attention)
