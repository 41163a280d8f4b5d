"""Checkpoint files: written atomically, read weights-only, the newest readable one found for a resume.

Its own module so that both the run (callbacks, cluster checks) and the tools (export) read checkpoints without
importing each other.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target folder, fsync, then rename over the target.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in /tmp, so on a
    cluster (checkpoints on another filesystem) the final step is a copy, not an atomic rename, and a job
    killed during it leaves a truncated checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


# Hyper-parameters that came from a Hydra config are pickled as OmegaConf containers; these plain data types
# are all they need, so checkpoints load weights-only (a file from elsewhere cannot run code).
_CHECKPOINT_SAFE_GLOBALS = [
    DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode,
    Any, dict, list, int, collections.defaultdict,
]


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load of a Lightning checkpoint on the CPU, weights-only with the OmegaConf types allowed."""
    with torch.serialization.safe_globals(_CHECKPOINT_SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)


def checkpoint_is_readable(path: Path) -> bool:
    """A cheap integrity check: the zip directory of a torch checkpoint is at its end, so truncation fails."""
    try:
        read_checkpoint(path, mmap=True)
    except Exception:  # any unreadable file is simply not a candidate
        return False
    return True


def find_resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest readable checkpoint in a run directory; a corrupt newest one falls back with a warning."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if checkpoint_is_readable(candidate):
            return candidate
        rank_zero_warn(f"Checkpoint {candidate} is unreadable (truncated or corrupt); trying an older one.")
    return None
