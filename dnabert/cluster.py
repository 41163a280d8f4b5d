"""Cluster concerns: the SLURM environment, preemption (checkpoint + requeue), DDP checks, wandb run identity."""

from __future__ import annotations

from typing import Any

import lightning as L


def cluster_plugins(num_nodes: int, devices: int) -> list[Any]:
    """Trainer plugins for the cluster environment (SLURM detection, requeue handled by our own callback)."""
    return []


def cluster_callbacks(run_dir: str) -> list[L.Callback]:
    """Callbacks that save a checkpoint and requeue when the scheduler signals preemption."""
    return []
