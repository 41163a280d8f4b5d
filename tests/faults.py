"""Faults a test injects into a real `python train.py` run through Hydra, e.g.
`+callbacks.fault._target_=tests.faults.RaiseAtStep +callbacks.fault.step=5 +callbacks.fault.rank=1`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L


class InjectedFault(RuntimeError):
    """Raised on purpose; its name in a log marks where the run's one error report is."""


class RaiseAtStep(L.Callback):
    """Raise in one rank only (the others carry on into the next collective) once it has trained `step` steps."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise InjectedFault(f"injected fault in rank {self.rank} at step {trainer.global_step}")


class PauseAtStep(L.Callback):
    """Hold the run (every rank) after `step` optimiser steps until the file `until` exists, having created
    `<until>.paused`: a test acts on a run that is alive, at a known point, and writes nothing meanwhile."""

    def __init__(self, step: int, until: str) -> None:
        self.step, self.until = step, Path(until)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step and not self.until.exists():
            self.until.with_name(f"{self.until.name}.paused").touch()
            while not self.until.exists():
                time.sleep(0.05)
