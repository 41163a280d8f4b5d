"""Exact resume: a run killed with SIGKILL and started again reaches the same weights and losses as a run that was
never interrupted; checkpoints are kept K at a time, a corrupt newest one falls back to the one before, and
`ckpt_path=` picks one explicitly. A checkpoint of another k or model size is refused by name."""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dnabert.errors import DnabertError
from dnabert.run.checkpoints import find_resume_checkpoint, write_logged_through
from dnabert.run.history import HistoryCSVLogger, set_resume_step
from dnabert.run.report import load_metrics, series
from dnabert.run.training import run
from tests.conftest import tiny_run_overrides
from tests.training_runs import (
    assert_same_weights,
    checkpoint,
    final_weights,
    finish,
    metric_by_step,
    run_dir,
    start_training,
    train,
    wait_for,
)

STEPS = ("max_steps=40", "trainer.val_every_n_steps=12")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_root = tmp_path_factory.mktemp("resume")
    train(output_root, "uninterrupted", *STEPS)
    return run_dir(output_root, "uninterrupted")


def test_only_the_newest_checkpoints_are_kept(uninterrupted: Path) -> None:
    kept = sorted(p.name for p in (uninterrupted / "checkpoints").glob("*.ckpt"))
    assert kept == ["last.ckpt", "step-0000032.ckpt", "step-0000036.ckpt", "step-0000040.ckpt"]
    assert checkpoint(uninterrupted / "checkpoints" / "last.ckpt")["global_step"] == 40


def logged_rows(directory: Path) -> list[dict[str, str]]:
    """The CSV history row by row, without the one column that measures wall time."""
    with open(directory / "csv" / "metrics.csv", newline="") as handle:
        return [{name: value for name, value in row.items() if name != "train/tokens_per_s"}
                for row in csv.DictReader(handle)]


def tensorboard_scalars(directory: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar as TensorBoard shows it, all event files of the run together."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(name)]


def kill_after(output_root: Path, run_name: str, step: int, *overrides: str) -> None:
    process = start_training(output_root, run_name, *overrides)
    wait_for(run_dir(output_root, run_name) / "checkpoints" / f"step-{step:07d}.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_killed_run_resumes_exactly_even_from_a_corrupt_newest_checkpoint(uninterrupted: Path) -> None:
    """Killed twice (SIGKILL, no chance to flush or save), the second time with a damaged newest checkpoint: the
    weights, the whole metrics history (row for row), the report, the curves and TensorBoard equal those of the
    uninterrupted run."""
    output_root = uninterrupted.parent.parent
    logged = (*STEPS, "logger=tensorboard")
    kill_after(output_root, "killed", 20, *logged)
    checkpoints = run_dir(output_root, "killed") / "checkpoints"
    saved_steps = {checkpoint(p)["global_step"] for p in checkpoints.glob("step-*.ckpt")}
    assert max(saved_steps) < 40, "the run finished before it was killed: nothing was tested"
    kill_after(output_root, "killed", 32, *logged)

    # The newest checkpoint is damaged (a kill while copying it, a full disk): the one before it must be used.
    newest = max(checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(newest.read_bytes()[:1000])
    output = train(output_root, "killed", *logged)
    assert f"Checkpoint {newest} is unreadable" in output
    assert "Restoring states from the checkpoint path" in output
    resumed_from = int(re.search(r"Training from step (\d+)", output).group(1))
    assert 16 <= resumed_from <= 32 and "Resuming from" in output and f"Resuming from {newest}" not in output

    resumed = run_dir(output_root, "killed")
    assert_same_weights(final_weights(resumed), final_weights(uninterrupted))
    # Rows of the earlier processes before the checkpoint stay, the rows replayed after it replace theirs.
    assert logged_rows(resumed) == logged_rows(uninterrupted)
    for metric in ("train/loss", "val/loss", "mask_rate", "lr"):
        assert metric_by_step(resumed, metric) == metric_by_step(uninterrupted, metric), metric
    assert (resumed / "report.md").read_text().replace("killed", "uninterrupted") == (
        uninterrupted / "report.md").read_text()
    resumed_metrics, uninterrupted_metrics = load_metrics(resumed), load_metrics(uninterrupted)
    for curve in ("train/loss", "val/loss", "train/ppl", "val/ppl", "train/acc", "val/acc", "lr", "mask_rate",
                  "train/tokens_seen"):  # what plots/curves.png draws
        pd.testing.assert_series_equal(series(resumed_metrics, curve), series(uninterrupted_metrics, curve))
    # TensorBoard: three processes wrote events, each step shows once, with the CSV's value.
    for metric in ("train/loss", "val/loss"):
        shown = tensorboard_scalars(resumed, metric)
        assert [step for step, _ in shown] == sorted(metric_by_step(uninterrupted, metric)), metric
        assert dict(shown) == pytest.approx(metric_by_step(uninterrupted, metric), rel=1e-6), metric


def test_a_final_step_between_checkpoints_is_saved_and_a_rerun_trains_nothing(tmp_path: Path) -> None:
    """max_steps=10 with a checkpoint every 4 steps: last.ckpt holds step 10 (before, step 8), so export and
    fine-tuning read the final weights, and the same command again finds the run finished instead of training
    steps 9 and 10 a second time."""
    train(tmp_path, "ten", "max_steps=10")
    directory = run_dir(tmp_path, "ten")
    last = directory / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == 10
    assert find_resume_checkpoint(directory / "checkpoints") == last
    rows = logged_rows(directory)
    output = train(tmp_path, "ten", "max_steps=10")
    assert "Resuming from " in output and "`max_steps=10` reached" in output and "Training from step" not in output
    assert logged_rows(directory) == rows
    assert checkpoint(last)["global_step"] == 10


def test_resume_waits_for_the_metrics_of_the_checkpointed_step(tmp_path: Path) -> None:
    """A checkpoint of step S is written before the metrics of step S reach the log. Killed in between, the run
    resumes from the checkpoint before, so the history has no gap; one without the record resumes as before."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for step in (4, 8):
        torch.save({"global_step": step}, checkpoints / f"step-{step:07d}.ckpt")
        time.sleep(0.01)  # distinct modification times: the newest is step 8
    assert find_resume_checkpoint(checkpoints) == checkpoints / "step-0000008.ckpt"
    write_logged_through(checkpoints, 4)
    with pytest.warns(UserWarning, match="step-0000008.ckpt \\(step 8\\) was saved, but the run stopped before"):
        assert find_resume_checkpoint(checkpoints) == checkpoints / "step-0000004.ckpt"
    write_logged_through(checkpoints, 8)
    assert find_resume_checkpoint(checkpoints) == checkpoints / "step-0000008.ckpt"


def test_sigterm_checkpoints_at_a_step_boundary_and_ckpt_path_continues_from_it(uninterrupted: Path) -> None:
    """SIGTERM (preemption) only sets a flag: the run finishes the accumulation cycle, saves last.ckpt, stops
    cleanly. `ckpt_path=` then starts another run directory from exactly that state."""
    output_root = uninterrupted.parent.parent
    process = start_training(output_root, "stopped", *STEPS)  # accumulation 2: a signal may come mid-cycle
    checkpoints = run_dir(output_root, "stopped") / "checkpoints"
    wait_for(checkpoints / "step-0000004.ckpt", process)
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    stopped_at = int(re.search(r"SIGTERM: saved \S+last\.ckpt at step (\d+); stopping", output).group(1))
    assert 4 <= stopped_at < 40
    last = checkpoints / "last.ckpt"
    assert checkpoint(last)["global_step"] == stopped_at
    # Validation only where an uninterrupted run validates (every 12 steps, logged as step 11, 23, ...), not once
    # more at the stop: the resumed history would have rows the uninterrupted one lacks.
    validated = metric_by_step(run_dir(output_root, "stopped"), "val/loss")
    assert set(validated) == {step - 1 for step in range(12, stopped_at + 1, 12)}

    output = train(output_root, "continued", *STEPS, f"ckpt_path='{last}'")  # quoted: Hydra reads '=' in paths
    assert f"Restoring states from the checkpoint path at {last}" in output
    assert f"Training from step {stopped_at} " in output
    continued = run_dir(output_root, "continued")
    assert min(metric_by_step(continued, "train/loss")) == stopped_at
    assert_same_weights(final_weights(continued), final_weights(uninterrupted))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [(["tokenizer.k=5"], "tokenizer.k=6 (this run: 5)"),
     (["model.hidden_size=64"], "model.hidden_size=32 (this run: 64)")],
)
def test_checkpoint_of_another_model_is_refused_by_name(compose_config, uninterrupted: Path, tmp_path: Path,
                                                        overrides: list[str], setting: str) -> None:
    from tests.training_runs import TINY

    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "run_name=other",
                         f"ckpt_path={uninterrupted / 'checkpoints' / 'last.ckpt'}", *overrides)
    with pytest.raises(DnabertError, match=re.escape(f"trained with {setting}")):
        run(cfg)


def test_csv_history_keeps_earlier_rows_before_the_resumed_step_and_drops_a_cut_row(tmp_path: Path) -> None:
    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    rows = "".join(f"{step},{8 - step / 10}\r\n" for step in range(6))
    metrics.write_text("step,train/loss\r\n" + rows + "6,7.3", newline="")  # a kill cut the row of step 6
    logger = HistoryCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    set_resume_step([logger], 7)
    logger.log_metrics({"val/loss": 7.0}, step=7)  # a new column: the header is rewritten, the rows stay
    logger.save()
    assert [(row["step"], row["train/loss"], row["val/loss"]) for row in logged_rows(tmp_path)] == [
        *((str(step), str(8 - step / 10), "") for step in range(6)), ("7", "", "7.0")]

    logger = HistoryCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    set_resume_step([logger], 3)  # resumed from an older checkpoint: what came after it is logged again
    logger.log_metrics({"train/loss": 7.75}, step=3)
    logger.save()
    assert [(row["step"], row["train/loss"]) for row in logged_rows(tmp_path)] == [
        ("0", "8.0"), ("1", "7.9"), ("2", "7.8"), ("3", "7.75")]

    HistoryCSVLogger(save_dir=str(tmp_path), name="csv", version="").experiment  # noqa: B018  (a fresh start)
    assert not metrics.exists()


class FullDisk(io.RawIOBase):
    """A file whose disk fills up after `room` bytes: the next write fails with ENOSPC, as the kernel's would."""

    def __init__(self, handle: io.BufferedWriter, room: int) -> None:
        super().__init__()
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()
        super().close()


def test_full_disk_while_saving_a_checkpoint_is_one_clear_error_and_the_run_resumes(
        compose_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: with umask 002 everything the run writes, the Hugging Face export included, is group-writable."""
    from dnabert.run import checkpoints as checkpoint_files

    opened: list[Path] = []

    def open_on_a_filling_disk(path: Path, mode: str = "r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115  (closed by the caller's `with`)
        opened.append(Path(path))
        return FullDisk(handle, room=4096) if len(opened) > 2 else handle  # step 2: two files; step 4: full

    previous_umask = os.umask(0o002)
    try:
        cfg = compose_config(*tiny_run_overrides(tmp_path, "full"))
        checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
        monkeypatch.setattr(checkpoint_files, "open", open_on_a_filling_disk, raising=False)
        with pytest.raises(DnabertError) as failure:
            run(cfg)
        assert str(failure.value) == (
            f"The disk is full: no room for checkpoint step-0000004.ckpt in {checkpoints}. The newest good "
            f"checkpoint is {checkpoints / 'last.ckpt'}; free space there (or move the run with paths.output_root) "
            "and run the same command again to resume."
        )
        assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "logged_through_step",
                                                               "step-0000002.ckpt"]  # no partial file left
        assert checkpoint(checkpoints / "last.ckpt")["global_step"] == 2

        monkeypatch.undo()
        run(compose_config(*tiny_run_overrides(tmp_path, "full", export=True)))
    finally:
        os.umask(previous_umask)
    directory = checkpoints.parent
    assert checkpoint(checkpoints / "last.ckpt")["global_step"] == 6
    assert [row["step"] for row in logged_rows(directory) if row["train/loss"]] == [str(s) for s in range(6)]
    written = list(directory.rglob("*"))
    assert directory / "hf_model" / "model.safetensors" in written
    modes = {path.relative_to(directory): oct(path.stat().st_mode & 0o777) for path in written}
    assert modes == {path: oct(0o775 if (directory / path).is_dir() else 0o664) for path in modes}
