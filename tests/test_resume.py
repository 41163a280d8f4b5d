"""Exact resume: a run killed with SIGKILL and started again reaches the same weights and losses as a run that was
never interrupted; checkpoints are kept K at a time, a corrupt newest one falls back to the one before, and
`ckpt_path=` picks one explicitly. A checkpoint of another k or model size is refused by name."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from dnabert.errors import DnabertError
from dnabert.run.training import run
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


def test_killed_run_resumes_exactly_even_from_a_corrupt_newest_checkpoint(uninterrupted: Path) -> None:
    output_root = uninterrupted.parent.parent
    process = start_training(output_root, "killed", *STEPS)
    checkpoints = run_dir(output_root, "killed") / "checkpoints"
    wait_for(checkpoints / "step-0000008.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    saved_steps = {checkpoint(p)["global_step"] for p in checkpoints.glob("step-*.ckpt")}
    assert max(saved_steps) < 40, "the run finished before it was killed: nothing was tested"

    # The newest checkpoint is damaged (a kill while copying it, a full disk): the one before it must be used.
    newest = max(checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(newest.read_bytes()[:1000])
    output = train(output_root, "killed", *STEPS)
    assert f"Checkpoint {newest} is unreadable" in output
    assert "Restoring states from the checkpoint path" in output

    resumed = run_dir(output_root, "killed")
    assert_same_weights(final_weights(resumed), final_weights(uninterrupted))
    # The killed process never flushed its CSV rows; the resumed one logs every step from its checkpoint on.
    resumed_from = int(re.search(r"Training from step (\d+)", output).group(1))
    assert resumed_from in saved_steps and "Resuming from" in output and f"Resuming from {newest}" not in output
    for metric in ("train/loss", "val/loss", "mask_rate", "lr"):
        expected = {s: v for s, v in metric_by_step(uninterrupted, metric).items() if s >= resumed_from}
        got = {s: v for s, v in metric_by_step(resumed, metric).items() if s >= resumed_from}
        assert got.keys() == expected.keys() and got, metric
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), metric


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

    output = train(output_root, "continued", *STEPS, f"ckpt_path='{last}'")  # quoted: Hydra reads '=' in paths
    assert f"Restoring states from the checkpoint path at {last}" in output
    assert f"Training from step {stopped_at} " in output
    continued = run_dir(output_root, "continued")
    assert min(metric_by_step(continued, "train/loss")) == stopped_at
    assert_same_weights(final_weights(continued), final_weights(uninterrupted))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [(["k=5"], "k=6 (this run: k=5)"), (["model.hidden_size=64"], "model.hidden_size=32 (this run: 64)")],
)
def test_checkpoint_of_another_model_is_refused_by_name(compose_config, uninterrupted: Path, tmp_path: Path,
                                                        overrides: list[str], setting: str) -> None:
    from tests.training_runs import TINY

    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "run_name=other",
                         f"ckpt_path={uninterrupted / 'checkpoints' / 'last.ckpt'}", *overrides)
    with pytest.raises(DnabertError, match=re.escape(f"trained with {setting}")):
        run(cfg)
