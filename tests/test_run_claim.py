"""One writer per run directory (dnabert/run/run_claim.py): a second launch on a directory that a live run holds
stops at once with exit 2 and the holder named, leaving the holder's run as it was; a holder's death, SIGKILL
included, frees the directory. The SLURM requeue case is in tests/test_slurm.py."""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dnabert.errors import DnabertError
from dnabert.run import run_claim
from dnabert.run.run_claim import (
    LOCK_FILE,
    Holder,
    claim_for,
    claim_run_dir,
    launches_the_run,
    read_holder,
    release_run_dirs,
    wait_for_own_claim,
)
from tests.conftest import ROOT
from tests.test_finetune import TINY_OVERRIDES, small_task
from tests.training_runs import (
    checkpoint,
    finish,
    hold_run_dir,
    run_dir,
    start_training,
    train,
    train_command,
    wait_for,
)

PAUSE_AT_5 = ("+callbacks.pause._target_=tests.faults.PauseAtStep", "+callbacks.pause.step=5")


@pytest.fixture(autouse=True)
def release_claims() -> None:
    """A claim taken in the test process would outlive the test."""
    yield
    release_run_dirs()


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def holder_pid(directory: Path) -> int | None:
    holder = read_holder(directory)
    return holder.pid if holder else None


def wait_until_held_by(directory: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while holder_pid(directory) != process.pid:
        assert process.poll() is None, f"the run ended before it held {directory}"
        assert time.monotonic() < deadline, f"{directory} was not claimed within {timeout} s"
        time.sleep(0.05)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """`directory` and everything under it: modification times, and the content of each file."""
    return {str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes() if path.is_file() else None)
            for path in [directory, *sorted(directory.rglob("*"))]}


def assert_refused(result: subprocess.CompletedProcess, directory: Path, holder_pid: int) -> None:
    """Exit 2 and one line that names the directory and the holder (host, pid, start time) and the way out."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"dnabert: error: {directory} is in use by a run on host {socket.gethostname()} "
                               f"(pid {holder_pid})")
    assert " since 20" in lines[0] and f"kill {holder_pid} on " in lines[0] and "run_name=" in lines[0]


# ------------------------------------------------------------------------------------------------ the lock itself
def test_a_second_process_is_refused_until_the_holder_dies(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    holder = hold_run_dir(directory)
    try:
        with pytest.raises(DnabertError, match=rf"is in use by a run on host \S+ \(pid {holder.pid}\) since "):
            claim_run_dir(directory)
        assert holder_pid(directory) == holder.pid  # the refused attempt left the record alone
    finally:
        kill(holder)
    claim_run_dir(directory)  # SIGKILL left nothing behind that blocks
    claim_run_dir(directory)  # this process holds it already: a second claim is no conflict
    release_run_dirs()  # (read the record only now: opening the file in the holder would drop its lock)
    assert holder_pid(directory) == os.getpid()
    other = hold_run_dir(directory)  # released: another process takes it
    kill(other)


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_claim(tmp_path: Path) -> None:
    """A DataLoader worker (a forked child) can outlive its run's process for a moment: the claim must not."""
    directory = tmp_path / "run"
    code = ("import os, sys, time; from pathlib import Path; from dnabert.run.run_claim import claim_run_dir; "
            "claim_run_dir(Path(sys.argv[1])); child = os.fork()\n"
            "if child == 0: time.sleep(3600)\n"
            "print(child, flush=True); time.sleep(3600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    child = int(holder.stdout.readline())
    try:
        kill(holder)
        os.kill(child, 0)  # still alive, with the lock file's descriptor
        claim_run_dir(directory)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_file_system_without_locks_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_claim.fcntl, "lockf", no_locks)
    with pytest.raises(DnabertError, match=r"no working file locks .* lock_run_dir=false"):
        claim_run_dir(tmp_path / "run")
    config = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "other")}, "lock_run_dir": False})
    claim_for(config)  # switched off: nothing is locked
    assert not (tmp_path / "other").exists()
    with pytest.raises(DnabertError, match=r"lock_run_dir='maybe' is not true or false"):
        claim_for(OmegaConf.merge(config, {"lock_run_dir": "maybe"}))


@pytest.mark.parametrize(("env", "first"), [
    ({}, True),
    ({"LOCAL_RANK": "1"}, False),  # a rank Lightning started
    ({"NODE_RANK": "1"}, False),  # another node's launching process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun's first process
    ({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "smoke", "SLURM_PROCID": "1"}, False),
    ({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "smoke", "SLURM_PROCID": "0"}, True),
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash", "SLURM_PROCID": "3"}, True),  # an interactive shell
])
def test_only_the_first_process_of_a_run_takes_the_claim(env: dict[str, str], first: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launches_the_run() is first


def test_another_slurm_task_waits_for_its_own_jobs_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task 1 of job 7's second start goes on once task 0 of that start holds the directory, not on a record of
    the first start (a requeue whose old start lingers)."""
    directory = tmp_path / "run"
    directory.mkdir()
    old_start = Holder("node1", 11, "2026-01-01 00:00:00 UTC", slurm_job="7", slurm_restart=0)
    (directory / LOCK_FILE).write_text(json.dumps(asdict(old_start)))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with pytest.raises(DnabertError, match=r"in use by a run on host node1 \(pid 11, SLURM job 7\) .*scancel 7"):
        wait_for_own_claim(directory, timeout_s=0.5)
    new_start = Holder("node2", 12, "2026-01-01 00:01:00 UTC", slurm_job="7", slurm_restart=1)
    (directory / LOCK_FILE).write_text(json.dumps(asdict(new_start)))
    wait_for_own_claim(directory, timeout_s=0.5)


# ------------------------------------------------------------------------------------------- through the CLI
def metric_rows_per_step(directory: Path, name: str) -> collections.Counter[int]:
    with open(directory / "csv" / "metrics.csv", newline="") as handle:
        return collections.Counter(int(row["step"]) for row in csv.DictReader(handle) if row.get(name))


def test_a_second_launch_of_a_running_training_is_refused_and_the_run_ends_intact(tmp_path: Path) -> None:
    go = tmp_path / "go"
    first = start_training(tmp_path, "twice", *PAUSE_AT_5, f"+callbacks.pause.until={go}")
    directory = run_dir(tmp_path, "twice")
    try:
        wait_until_held_by(directory, first)
        wait_for(tmp_path / "go.paused", first)
        before = snapshot(directory)
        second = subprocess.run(train_command(tmp_path, "twice"), capture_output=True, text=True, cwd=ROOT,
                                timeout=300)
        assert_refused(second, directory, first.pid)
        assert snapshot(directory) == before  # nothing written: not .hydra/, not the log, not a checkpoint
        go.touch()
        finish(first)
    finally:
        kill(first)
    checkpoints = sorted(path.name for path in (directory / "checkpoints").glob("*.ckpt"))
    assert checkpoints == ["last.ckpt", "step-0000004.ckpt", "step-0000008.ckpt", "step-0000012.ckpt"]
    rows = metric_rows_per_step(directory, "train/loss")
    assert sorted(rows) == list(range(12)) and set(rows.values()) == {1}


def test_a_run_killed_with_sigkill_leaves_no_claim_and_its_rerun_resumes(tmp_path: Path) -> None:
    go = tmp_path / "never"
    first = start_training(tmp_path, "killed", *PAUSE_AT_5, f"+callbacks.pause.until={go}")
    directory = run_dir(tmp_path, "killed")
    try:
        wait_until_held_by(directory, first)
        wait_for(tmp_path / "never.paused", first)
        kill(first)  # the training process only: its data worker may outlive it for a moment
        output = train(tmp_path, "killed")
    finally:
        kill(first)
        end_group(first)
    assert "Training from step 4 " in output
    assert checkpoint(directory / "checkpoints" / "last.ckpt")["global_step"] == 12
    rows = metric_rows_per_step(directory, "train/loss")
    assert sorted(rows) == list(range(12))


def end_group(process: subprocess.Popen) -> None:
    """Kill what is left of a run started as its own process group (start_new_session: its data worker too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def test_fine_tuning_is_refused_while_its_run_directory_is_held(tmp_path: Path) -> None:
    directory = tmp_path / "finetune_custom" / "none"
    command = [sys.executable, str(ROOT / "finetune.py"), "pretrained=none", "task=file",
               f"task.train={small_task(tmp_path, rows=48)}", "task.dev_fraction=0.25", "max_epochs=1",
               "batch_size=16", "tokenizer.k=3", "export=false", f"paths.output_root={tmp_path}", *TINY_OVERRIDES]
    holder = hold_run_dir(directory)  # as another fine-tuning run of the same backbone and task would
    try:
        refused = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert_refused(refused, directory, holder.pid)
        assert [path.name for path in directory.iterdir()] == [LOCK_FILE]  # no .hydra/, log or seed folder
    finally:
        kill(holder)
