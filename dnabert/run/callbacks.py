"""Trainer plumbing that is about the run, not the model: atomic checkpoints, progress, throughput, artifacts."""

from __future__ import annotations

import datetime
import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from dnabert.models import get_family


class FinalStepCheckpoint(L.Callback):
    """Save ``checkpoints/last.ckpt`` at the end of training when no checkpoint holds the final step (``max_steps``
    not a multiple of the checkpoint interval): otherwise a finished run's last.ckpt lags its final weights, which
    fine-tuning and export read, and the same command run again trains those steps a second time. Listed before
    MetricsHistory, whose on_train_end then records the step as logged."""

    def __init__(self, run_dir: str) -> None:
        self.checkpoint_path = Path(run_dir) / "checkpoints" / "last.ckpt"
        self.saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_step = trainer.global_step  # a resumed run's checkpoint holds this step already

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved_step is not None and self.saved_step != trainer.global_step:  # None: nothing was trained
            trainer.save_checkpoint(self.checkpoint_path)
            rank_zero_info(f"Saved {self.checkpoint_path} at the final step {trainer.global_step}.")


class StepProgressBar(TQDMProgressBar):
    """Progress in optimiser steps out of max_steps (the stream is endless, so batches have no total).

    In a terminal it is a tqdm bar. Where output goes to a file (a SLURM log), a bar redrawn with carriage
    returns becomes one line of megabytes that `tail -f` cannot follow, so there it prints a plain line at
    most every `log_interval_s` seconds instead, and at the last step.
    """

    def __init__(self, log_interval_s: float = 30.0, plain: bool | None = None) -> None:
        super().__init__()
        self.log_interval_s = log_interval_s
        self.plain = not sys.stdout.isatty() if plain is None else plain
        self._last_line_time = -math.inf
        self._start: tuple[float, int] = (0.0, 0)  # (time, step) when this process began training

    @property
    def train_description(self) -> str:
        return "step"

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        """One bar for the whole run, starting at the resumed step (Lightning's also draws 'Epoch 0: 0/?')."""
        if self.plain:
            self.disable()  # no tqdm at all; lines are printed by on_train_batch_end
        bar = self.init_train_tqdm()
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step
        self.train_progress_bar = bar
        self._start = (time.monotonic(), trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """The stream is one endless epoch: nothing to reset."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is None or trainer.global_step == bar.n:
            return  # mid-accumulation: the optimiser step has not advanced
        bar.n = trainer.global_step
        if not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        elif self.plain and trainer.is_global_zero:
            now = time.monotonic()
            if now - self._last_line_time >= self.log_interval_s or trainer.global_step >= trainer.max_steps:
                self._last_line_time = now
                print(self.plain_line(trainer, pl_module, now), flush=True)

    def plain_line(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> str:
        """'step 400/800 (50%) | train/loss=7.52, ... | 0:00:33 elapsed, 0:00:33 left'."""
        step, total = trainer.global_step, trainer.max_steps
        start_time, start_step = self._start
        elapsed = now - start_time
        per_step = elapsed / max(step - start_step, 1)
        metrics = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                            for name, value in self.get_metrics(trainer, pl_module).items())
        return (
            f"step {step}/{total} ({step / total:.0%}) | {metrics} | "
            f"{datetime.timedelta(seconds=round(elapsed))} elapsed, "
            f"{datetime.timedelta(seconds=round(per_step * (total - step)))} left"
        )

    # Held-out evaluation takes seconds and would print a bar of its own into every log; its result
    # (val/loss) shows on the training bar instead.
    def on_validation_start(self, *_: Any) -> None:
        pass

    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        tokens_per_s = trainer.callback_metrics.get("train/tokens_per_s")
        if tokens_per_s is not None:
            metrics["tok/s"] = f"{float(tokens_per_s):,.0f}"
        return metrics


class ThroughputLogger(L.Callback):
    """Logs sequences and real (non-padding) tokens seen, summed over ranks, and tokens per second.

    Token counts come from the CPU side of each batch (`num_tokens`), so measuring costs no device sync.
    """

    def __init__(self) -> None:
        self.tokens_since_log = 0
        self.sequences_since_log = 0
        self.tokens_seen = 0
        self.sequences_seen = 0
        self.window_start = time.perf_counter()
        self.validation_start = 0.0

    def state_dict(self) -> dict[str, int]:
        return {"tokens_seen": self.tokens_seen, "sequences_seen": self.sequences_seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.tokens_seen = state_dict["tokens_seen"]
        self.sequences_seen = state_dict["sequences_seen"]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Held-out evaluation is not training time: leave it out of tokens per second."""
        self.window_start += time.perf_counter() - self.validation_start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        self.tokens_since_log += batch["num_tokens"]
        self.sequences_since_log += batch["window"].shape[0]  # windows, not rows: packed rows hold several
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not step_done or trainer.global_step % trainer.log_every_n_steps:
            return
        counts = torch.tensor([self.tokens_since_log, self.sequences_since_log], dtype=torch.float64)
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        elapsed = time.perf_counter() - self.window_start
        self.tokens_seen += int(counts[0])
        self.sequences_seen += int(counts[1])
        pl_module.log_dict({
            "train/tokens_per_s": float(counts[0]) / max(elapsed, 1e-9),
            "train/tokens_seen": float(self.tokens_seen),
            "train/sequences_seen": float(self.sequences_seen),
        })
        self.tokens_since_log = self.sequences_since_log = 0
        self.window_start = time.perf_counter()


class RunArtifacts(L.Callback):
    """At the end of training: plots and a report of the curves, a Hugging Face export, and where it all is."""

    def __init__(self, run_dir: str, export: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.export = export

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Imported when a run ends: matplotlib and pandas add about a second to every start otherwise.
        from dnabert.run.report import write_report

        for logger in trainer.loggers:
            logger.save()
        lines = [f"Run directory: {self.run_dir}"]
        report_paths = []
        if not any(isinstance(logger, CSVLogger) for logger in trainer.loggers):
            lines.append("  report: none (it reads the CSV log, and this run has logger=none or no csv logger)")
        else:
            try:
                report_paths = write_report(self.run_dir)
            except Exception as err:  # a report must never cost the user their trained model
                rank_zero_warn(f"Could not write the run report: {err}")
        lines += [f"  report: {path}" for path in report_paths]
        plots = [str(path) for path in report_paths if Path(path).suffix == ".png"]
        for logger in trainer.loggers:
            if plots and isinstance(logger, WandbLogger):  # the same figure beside the live curves
                logger.log_image(key="report/curves", images=plots, step=trainer.global_step)
        finished = trainer.global_step >= trainer.max_steps
        tokenizer = "kmer" if pl_module.hparams.get("tokenizer_vocab_size") is None else "bpe"
        family = get_family(pl_module.family)
        export_dir = self.run_dir / "hf_model"
        if self.export and finished and family.tokenizer != tokenizer:
            lines.append(f"  Hugging Face model: not written ({family.label} on {tokenizer.upper()} tokens has no "
                         "export layout; the run keeps its tokenizer.json and checkpoints)")
        elif self.export and finished:  # a preempted run exports when it really ends, not at every requeue
            tokenizer_file = self.run_dir / "tokenizer.json" if tokenizer == "bpe" else None  # the run's copy
            family.export(pl_module.model, export_dir, None, pl_module.k, tokenizer_file,
                          pl_module.hparams.get("train_config"))
            lines.append(f"  {family.export_description(None)}: {export_dir}")
        checkpoint_dir = self.run_dir / "checkpoints"
        lines.append(f"  checkpoints: {checkpoint_dir}")
        rank_zero_info("\n".join(lines))
