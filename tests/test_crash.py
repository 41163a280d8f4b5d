"""A crash ends the run instead of hanging it (issue 12, item 8). Data workers ignore SIGTERM on purpose (they must
outlive SLURM's preemption signal until the step ends); when Lightning's clean-up after an exception failed too, the
process waited for them at exit forever, and its DDP peers in their next collective. A rank that failed because
another one did reported an error of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from dnabert.data.datamodule import ignore_scheduler_signals
from dnabert.run.cluster import end_data_workers, end_launched_ranks, failed_first
from tests.training_runs import run_dir, start_training, wait_for


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(2)


def live_processes(sid: int) -> list[str]:
    """Processes with this SID (setsid) that still run, zombies excluded: a run's ranks and data workers share it."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, sid
            alive.append(stat.parent.name)
    return alive


def test_data_workers_that_ignore_sigterm_are_ended_without_a_second_error() -> None:
    """What a crashing process does before it exits: its workers go, and their deaths raise nothing here."""
    loader = DataLoader(Endless(), batch_size=None, num_workers=2, worker_init_fn=ignore_scheduler_signals)
    batches = iter(loader)
    next(batches), next(batches)  # one batch from each worker: both have run worker_init_fn
    workers = list(batches._workers)
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)  # what multiprocessing's exit handler sends: ignored
    next(batches)
    assert all(worker.is_alive() for worker in workers)
    end_data_workers()
    assert not any(worker.is_alive() for worker in workers)
    assert failed_first()  # no process group: this process is the only one that can have failed


def test_the_launched_ranks_are_killed_without_lightnings_observer_killing_their_launcher() -> None:
    """The failing launcher kills the ranks it started; Lightning's child-process observer, polling every 5 s,
    must not then see a killed child and SIGKILL the launcher while it reports the error (the run ended with -9
    instead of the traceback and exit 1 when the report took longer than the poll). Processes stand in for both."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher_process, rank = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    launcher.procs.append(rank)
    observer = _ChildProcessObserver(main_pid=launcher_process.pid, child_processes=launcher.procs)
    try:
        end_launched_ranks(launcher)
        assert rank.returncode == -signal.SIGKILL  # killed and reaped
        assert observer._run() is True  # nothing left to watch: the observer stops
        time.sleep(0.2)
        assert launcher_process.poll() is None  # and did not kill the launcher
    finally:
        launcher_process.kill()
        launcher_process.wait()


def ended(process: subprocess.Popen) -> str:
    """The run's output once it has ended; a hang guard, not a speed measurement (the runs stop at step ~4 of 2000)."""
    try:
        process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"the run hung:\n{process.log_path.read_text()[-4000:]}") from None
    return process.log_path.read_text()


def assert_every_process_ended(process: subprocess.Popen) -> None:
    """No rank or data worker is left; a worker whose rank was killed notices within torch's 5 s status check."""
    for _ in range(100):
        if not live_processes(process.pid):
            return
        time.sleep(0.1)
    assert live_processes(process.pid) == []


DDP_WITH_WORKERS = ("trainer=cpu_ddp", "trainer.devices=2", "data.num_workers=1", "max_steps=2000")


@pytest.mark.slow
def test_a_failing_rank_1_ends_the_run_and_its_error_is_the_only_one_reported(tmp_path: Path) -> None:
    """Rank 0 is waiting in a gradient all-reduce when rank 1 raises. Before the fix rank 0 then reported an error
    of its own ("Connection closed by peer") that buried the real one."""
    process = start_training(tmp_path, "crash", *DDP_WITH_WORKERS, "+callbacks.fault._target_=tests.faults.RaiseAtStep",
                             "+callbacks.fault.step=3", "+callbacks.fault.rank=1")
    output = ended(process)
    assert process.returncode != 0, output[-4000:]
    assert output.count("InjectedFault: injected fault in rank 1 at step 3") == 1, output[-4000:]
    assert output.count("Traceback (most recent call last)") == 1, output[-4000:]
    assert "rank 0 stopped because another rank failed first" in output or process.returncode == -signal.SIGKILL
    assert_every_process_ended(process)


@pytest.mark.slow
def test_a_crash_while_cleaning_up_after_a_crash_still_ends_the_run(tmp_path: Path) -> None:
    """The issue's reproduction, with two ranks: the CSV folder is deleted mid-run, so rank 0's logger fails, and
    fails again while Lightning finalizes it, which skipped Lightning's clean-up: rank 0 then waited at exit for its
    data worker (it ignores SIGTERM) forever, and rank 1 in the all-reduce for rank 0."""
    process = start_training(tmp_path, "crash", *DDP_WITH_WORKERS)
    directory = run_dir(tmp_path, "crash")
    wait_for(directory / "checkpoints" / "step-0000004.ckpt", process)
    shutil.rmtree(directory / "csv")
    output = ended(process)
    assert process.returncode == 1, output[-4000:]
    assert output.count("FileNotFoundError:") == 1 and f"{directory}/csv/metrics.csv" in output, output[-4000:]
    assert output.count("Traceback (most recent call last)") == 1, output[-4000:]
    assert_every_process_ended(process)
