"""What every family's export and import shares (each family's own layouts: ``models/<family>/interop.py``).

An export is written into a staging folder and moved into place only once complete; weights are loaded strictly,
so a directory that does not fit the configuration is one DnabertError, never a half-initialised model.
transformers and safetensors are imported here; ``multimolecule`` only when a MultiMolecule layout is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from dnabert.errors import DnabertError

LAYOUTS = ("original", "multimolecule")
COMPILED_PREFIX = "_orig_mod."  # what torch.compile adds to state_dict keys
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers' classification head -> MultiMolecule's *ForSequencePrediction (after the family's backbone renames).
MULTIMOLECULE_HEAD_RENAMES = (("classifier.", "sequence_head.decoder."),)


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU tensors under the model's own names, whether or not torch.compile wrapped it."""
    return {key.replace(COMPILED_PREFIX, ""): value.detach().cpu() for key, value in model.state_dict().items()}


def write_replacing(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging_dir)`` and move the result to ``out_dir`` only once it is complete, replacing an earlier
    export there; a non-empty directory that is not an export is refused, never deleted."""
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with _no_progress_bars():
            write(staging)
        _follow_umask(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _follow_umask(root: Path) -> None:
    """mkdtemp makes the staging folder 0700 (and the weights file came out 0600): give every file of the export
    the mode the user's umask gives anything else the run writes, so colleagues on a shared filesystem can load
    the model."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a "Writing model shards" bar for a one-file save; it only clutters the run's log."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_replaceable(out_dir: Path) -> None:
    """An export replaces an earlier export (it has config.json; a LoRA adapter folder, adapter_config.json), never
    a folder of something else."""
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir())
        and not any((out_dir / name).is_file() for name in ("config.json", "adapter_config.json"))
    ):
        raise DnabertError(
            f"{out_dir} exists and is not an earlier export; choose a new output directory."
        )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a saved model folder, whichever of transformers' weight files it has."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            try:
                return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
            except Exception as err:  # any decoding failure means the same to the user: not a usable file
                raise DnabertError(f"Cannot read weights {path} ({err}).") from err
    raise DnabertError(f"{directory} has no weights file ({' or '.join(WEIGHT_FILES)}).")


def load_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Every weight or none: a missing, extra or misshapen tensor is a DnabertError that names ``source``."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise DnabertError(f"The weights in {source} do not fit the model configuration: {err}") from err


def plain(value: object) -> object:
    """OmegaConf containers (from Hydra configs in hyper-parameters) as plain dicts/lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def prefix_renamed(key: str, renames: Sequence[tuple[str, str]]) -> str:
    """`key` with the first matching prefix replaced."""
    for old, new in renames:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def import_multimolecule() -> Any:
    """The multimolecule package, imported only when a MultiMolecule layout is written (it is an optional extra)."""
    try:
        import multimolecule
    except ImportError as err:
        raise DnabertError("--layout multimolecule needs the multimolecule package: pip install multimolecule") from err
    return multimolecule


def multimolecule_encoder_fields(config: Any) -> dict[str, Any]:
    """The BERT encoder fields both families' configs share, under the names of MultiMolecule's configs."""
    return dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
    )


def classifier_head(config_json: dict[str, Any]) -> dict[str, Any]:
    """The head of a fine-tuned classifier's config.json, as ``classifier_writer`` got it: num_labels, id2label
    (class names by id; JSON keeps its keys as strings), problem_type."""
    id2label = {int(index): str(name) for index, name in (config_json.get("id2label") or {}).items()}
    return {"num_labels": int(config_json.get("num_labels") or len(id2label)), "id2label": id2label,
            "problem_type": config_json.get("problem_type")}


def card_json_section(title: str, values: object) -> str:
    """A model card's section that shows a (Hydra) config as JSON: the training or fine-tuning settings."""
    return f"## {title}\n\n```json\n{json.dumps(plain(values), indent=2, default=str)}\n```\n"
