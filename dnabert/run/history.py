"""One metrics history per run directory, however often the run was resumed.

Lightning's CSVLogger deletes `metrics.csv` when a process starts, and a TensorBoard log gets a second set of
points for every step replayed after a resume. Here a resumed run keeps the rows its earlier processes logged for
the steps before the checkpoint it resumes from, and replaces the rest by the rows it logs again: resumes are
exact (same values per step), so the history equals that of a run that was never interrupted.

wandb cannot take rows back: there a resumed process sends only the (metric, step) pairs the wandb run does not
hold yet (`HistoryWandbLogger`), so the dashboard, online or after `wandb sync` of all offline folders, shows each
step once.

One gap remains in Lightning's order of events: a checkpoint of step S is written before the metrics of step S
(logged as step S-1) and before the validation that follows it. `MetricsHistory` therefore records, beside the
checkpoints, the step up to which everything logged is on disk; the resume picks the newest checkpoint at or
below it (`dnabert.run.checkpoints.find_resume_checkpoint`), so a kill in that gap costs steps, not rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from dnabert.run.checkpoints import write_logged_through
from dnabert.run.wandb_records import logged_steps, run_logs, summary_steps


def _rewrite_rows(path: Path, fieldnames: list[str], first_dropped_step: int | None = None) -> None:
    """Rewrite a metrics CSV under a new header, atomically (a kill midway leaves the old file whole).

    Rows at or after `first_dropped_step` are left out, and so is a last line without its newline: that is a
    row a killed process was writing, and its last number may be cut short.
    """
    with open(path, newline="") as handle:
        text = handle.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(text.splitlines()))
    if first_dropped_step is not None:
        rows = [row for row in rows if row.get("step") and int(float(row["step"])) < first_dropped_step]
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, but the rows of earlier processes before `resume_step` stay in the file."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by the parent's __init__ where Lightning deletes the file: keep the history instead."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step == 0:  # a fresh start in this directory: nothing earlier belongs to this run
            path.unlink()
            return
        with open(path, newline="") as handle:
            self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])
        _rewrite_rows(path, self.metrics_keys, first_dropped_step=self.resume_step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _rewrite_rows(Path(self.metrics_file_path), fieldnames)


class HistoryCSVLogger(CSVLogger):
    """`csv/metrics.csv` holds the whole run: the rows of earlier processes before the resumed step, then ours."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = 0

    @property
    @rank_zero_experiment
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self.resume_step)
        return self._experiment


class HistoryTensorBoardLogger(TensorBoardLogger):
    """TensorBoard hides the earlier processes' events from the resumed step on (SummaryWriter's purge_step),
    so the steps logged again appear once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = 0

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None and self.resume_step > 0:
            self._kwargs["purge_step"] = self.resume_step
        return super().experiment


class HistoryWandbLogger(WandbLogger):
    """Lightning's WandbLogger, but a resumed process leaves out the metrics the wandb run holds at that step.

    What the run holds: offline, the history in the transaction logs of the run's earlier processes (exact, per
    metric); online, the resumed run's summary from the server (every metric in it counts as held up to its
    `trainer/global_step`, so a row cut at that last step is left out rather than sent twice). Resumes are exact:
    a left-out value equals the one the run holds.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = 0
        self._held_steps: dict[str, int] | None = None

    def held_steps(self) -> dict[str, int]:
        """Per metric, the highest step the wandb run holds from earlier processes (read once, at the first row)."""
        if self._held_steps is None:
            self._held_steps = {}
            if self.resume_step > 0:
                run = self.experiment
                if run.offline:
                    own_folder = Path(run.settings.sync_dir)
                    earlier = [p for p in run_logs(own_folder.parent, run.id) if p.parent != own_folder]
                    self._held_steps = logged_steps(earlier)
                else:
                    self._held_steps = summary_steps(dict(run.summary))
        return self._held_steps

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None:
            held = self.held_steps()
            prefix = f"{self._prefix}{self.LOGGER_JOIN_CHAR}" if self._prefix else ""
            metrics = {key: value for key, value in metrics.items() if step > held.get(prefix + key, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)


def set_resume_step(loggers: list[Logger], step: int) -> None:
    """Tell the history-keeping loggers where this process continues, before they open their files."""
    for logger in loggers:
        if isinstance(logger, HistoryCSVLogger | HistoryTensorBoardLogger | HistoryWandbLogger):
            logger.resume_step = step


class MetricsHistory(L.Callback):
    """Records which checkpoints have their metrics on disk (see the module docstring)."""

    def __init__(self, run_dir: str) -> None:
        self.checkpoint_dir = Path(run_dir) / "checkpoints"
        self.unrecorded_step: int | None = None

    def _record(self, trainer: L.Trainer, step: int) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()
            write_logged_through(self.checkpoint_dir, step)
        self.unrecorded_step = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """What lies beyond the resumed step was dropped from the history: no newer checkpoint counts yet."""
        self._record(trainer, trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.unrecorded_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """The previous step's rows and its validation are logged by now."""
        if self.unrecorded_step is not None:
            self._record(trainer, self.unrecorded_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.unrecorded_step is not None:
            self._record(trainer, self.unrecorded_step)
