"""Checkpoint files: written atomically, read weights-only, the newest usable one found for a resume.

Its own module so that both the run (callbacks, cluster checks) and the tools (export) read checkpoints without
importing each other.
"""

from __future__ import annotations

import collections
import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from dnabert.errors import DnabertError

# Beside the checkpoints: the step up to which everything the run logged is on disk (see dnabert.run.history).
LOGGED_THROUGH_FILE = "logged_through_step"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain; torch's own file writer reports a short write as 'unexpected pos'."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(err, RuntimeError) and "unexpected pos" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


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
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err):
                raise
            partial.unlink(missing_ok=True)  # give the space back before anything else needs it
            newest = find_resume_checkpoint(target.parent)
            raise DnabertError(
                f"The disk is full: no room for checkpoint {target.name} in {target.parent}. The newest good "
                f"checkpoint is {newest or 'none (nothing was saved yet)'}; free space there (or move the run with "
                "paths.output_root) and run the same command again to resume."
            ) from err
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


def checkpoint_step(path: str | Path) -> int:
    """The optimiser step a checkpoint was saved at."""
    return int(read_checkpoint(path, mmap=True)["global_step"])


def write_logged_through(checkpoint_dir: Path, step: int) -> None:
    """Record that the metrics of every step before `step` are on disk (atomically: it decides resumes)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / LOGGED_THROUGH_FILE
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(f"{step}\n")
    os.replace(partial, path)


def read_logged_through(checkpoint_dir: Path) -> int | None:
    """The recorded step, or None for a run directory that records none (written before this existed)."""
    try:
        return int((checkpoint_dir / LOGGED_THROUGH_FILE).read_text())
    except (OSError, ValueError):
        return None


def find_resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest usable checkpoint in a run directory, falling back with a warning past a corrupt one and past
    one saved after the last step whose metrics reached the disk (resuming there would leave a gap in them)."""
    if not checkpoint_dir.is_dir():
        return None
    logged_through = read_logged_through(checkpoint_dir)
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            step = checkpoint_step(candidate)
        except Exception:  # any unreadable file is simply not a candidate
            rank_zero_warn(f"Checkpoint {candidate} is unreadable (truncated or corrupt); trying an older one.")
            continue
        if logged_through is not None and step > logged_through:
            rank_zero_warn(
                f"Checkpoint {candidate} (step {step}) was saved, but the run stopped before the metrics of that "
                f"step were written; resuming from an older one so that the metrics history has no gap."
            )
            continue
        return candidate
    return None
