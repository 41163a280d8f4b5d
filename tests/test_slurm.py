"""The SLURM path against a real SLURM on this machine (slurm/local/up.sh: Debian's slurm-wlm + munge, installed with
apt-get when missing): the CPU smoke script runs 2 tasks (DDP over gloo); SIGUSR1 (what `--signal` sends near the
time limit) makes it checkpoint at a step boundary and requeue itself; `scontrol requeue` from outside stops it
mid-run; each time the requeued job continues in the same run directory from the saved step and finally finishes.
The soak (issue 12, item 9) requeues one job six times, once after losing a rank to SIGKILL, and compares the end
with an uninterrupted run: weights, run directory, wandb run, metrics history.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from dnabert.run.report import load_metrics
from dnabert.run.run_claim import read_holder
from tests.conftest import ROOT
from tests.training_runs import (
    TINY,
    checkpoint,
    final_weights,
    finish,
    free_port,
    hold_run_dir,
    metric_by_step,
    run_dir,
    start_training,
    wait_for,
)

pytestmark = pytest.mark.slurm

LOCAL = ROOT / "slurm" / "local"
MAX_STEPS = 200
EVERY = 20


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private one-node cluster (own directory and ports), torn down by PID afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM needs root (slurmd, munged, apt-get)")
    base = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "DNABERT_SLURM_DIR": str(base), "DNABERT_SLURMCTLD_PORT": str(free_port()),
           "DNABERT_SLURMD_PORT": str(free_port())}
    up = subprocess.run([str(LOCAL / "up.sh")], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode == 3:
        pytest.skip(f"SLURM cannot be installed here: {up.stderr.strip()[-500:]}")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        env["SLURM_CONF"] = str(base / "slurm.conf")
        yield env
    finally:
        subprocess.run([str(LOCAL / "down.sh")], env=env, capture_output=True, timeout=120)


def slurm_command(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def job_state(env: dict[str, str], job: str) -> dict[str, str]:
    fields = slurm_command(env, "scontrol", "show", "job", job).split()
    return dict(field.split("=", 1) for field in fields if "=" in field)


def wait_until(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_smoke_job_checkpoints_requeues_and_resumes(slurm: dict[str, str], tmp_path: Path) -> None:
    assert shutil.which("sbatch", path=slurm["PATH"])
    outputs = tmp_path / "outputs"
    job = slurm_command(
        slurm, "sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out",
        f"--export=ALL,DNABERT_PYTHON={sys.executable}", str(ROOT / "slurm" / "smoke_cpu.sbatch"),
        *TINY, f"max_steps={MAX_STEPS}", f"callbacks.model_checkpoint.every_n_train_steps={EVERY}",
        "trainer.val_every_n_steps=100", f"paths.output_root={outputs}",
    ).strip()
    log = tmp_path / f"slurm-{job}.out"
    run = outputs / "demo" / f"job{job}"  # run_name = job id: the same after every requeue
    checkpoints = run / "checkpoints"

    def log_text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    def restarted(count: int) -> bool:
        return f"restart {count} on" in log_text()

    # 1. Near the time limit SLURM sends SIGUSR1 (--signal=SIGUSR1@90); send it now, during training.
    wait_for(checkpoints / f"step-{EVERY:07d}.ckpt", timeout=300)
    slurm_command(slurm, "scancel", "--signal=USR1", job)
    wait_until(lambda: restarted(1), "the job to requeue itself after SIGUSR1")
    saved = re.findall(r"SIGUSR1: saved \S+last\.ckpt at step (\d+)", log_text())
    assert len(saved) == 1, log_text()[-4000:]
    assert f"Requeued SLURM job {job}" in log_text()
    wait_until(lambda: "Training from step" in log_text().split("restart 1 on")[1], "the requeued job to start")
    assert f"Training from step {saved[0]} " in log_text().split("restart 1 on")[1]

    # 2. Requeued from outside in the middle of the run (what preemption with PreemptMode=REQUEUE does).
    second = int(saved[0]) // EVERY * EVERY + EVERY
    wait_for(checkpoints / f"step-{second:07d}.ckpt", timeout=120)
    slurm_command(slurm, "scontrol", "requeue", job)
    wait_until(lambda: restarted(2), "the job to start again after scontrol requeue")
    # The old processes are gone now and the new ones have not saved yet: the newest checkpoint is the resume point.
    newest_saved = max(checkpoint(p)["global_step"] for p in checkpoints.glob("*.ckpt"))
    assert second <= newest_saved < MAX_STEPS, "the job finished before it was requeued: nothing was tested"
    wait_until(lambda: "Training from step" in log_text().split("restart 2 on")[1], "the requeued job to start")
    assert f"Training from step {newest_saved} " in log_text().split("restart 2 on")[1]

    # 3. It finishes in the same run directory; the steps after the last resume point are all logged.
    wait_until(lambda: job_state(slurm, job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"),
               "the job to finish", timeout=300)
    state = job_state(slurm, job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "2", log_text()[-4000:]
    assert checkpoint(checkpoints / "last.ckpt")["global_step"] == MAX_STEPS
    assert set(range(newest_saved, MAX_STEPS)) <= set(metric_by_step(run, "train/loss"))
    assert sorted(p.name for p in (outputs / "demo").iterdir()) == [f"job{job}"]


def test_hydra_submitit_launcher_runs_a_sweep_job(slurm: dict[str, str], tmp_path: Path) -> None:
    """`-m hydra/launcher=slurm`: submitit submits one job per combination, trainer.devices tasks each, with our
    SIGUSR1 + requeue settings, and each job trains in its own run directory (run_name from the swept value)."""
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
         "trainer=cpu_ddp", "trainer.devices=2", *TINY, f"paths.output_root={outputs}", "run_name=seed${seed}",
         "seed=7"],
        env=slurm, cwd=ROOT, capture_output=True, text=True, timeout=300,  # the job imports dnabert from here
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert checkpoint(outputs / "demo" / "seed7" / "checkpoints" / "last.ckpt")["global_step"] == 12
    script = next((outputs / "demo" / "multirun" / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in ("--ntasks-per-node=2", "--signal=USR1@300", "--requeue", "--partition=debug"):
        assert f"#SBATCH {line}" in script
    task_logs = "".join(p.read_text() for p in (outputs / "demo" / "multirun" / ".submitit").rglob("*_log.*"))
    assert "Starting with 2 processes" in task_logs and "Training from step 0 " in task_logs


def test_suite_sweep_runs_one_job_per_pair_and_summarises_when_it_returns(slurm: dict[str, str],
                                                                        tmp_path: Path) -> None:
    """`python suite.py -m hydra/launcher=slurm 'pair=range(0,2)'`: one SLURM job per (dataset, seed) of a stand-in
    GUE suite (2 datasets x 1 seed), and the result card once the sweep returns, from the finished pairs."""
    from tests.test_suite import COLLAPSING, LEARNABLE, suite_command, write_stand_in_gue

    outputs = tmp_path / "outputs"
    command = suite_command(write_stand_in_gue(tmp_path), outputs, "seeds=[1]", "max_retries=0")
    command[2:2] = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]
    result = subprocess.run([*command, "pair=range(0,2)"], env=slurm, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    suite_dir = outputs / "suite_gue" / "none-none"
    submitted = (suite_dir / "multirun" / ".submitit").iterdir()
    tasks = [path.name for path in submitted if re.fullmatch(r"\d+_\d+", path.name)]
    assert len(tasks) == 2  # one job (of a SLURM job array) per pair
    results = json.loads((suite_dir / "results.json").read_text())
    assert results["datasets"][LEARNABLE]["n"] == 1 and results["missing"] == []
    assert [(c["dataset"], c["seed"]) for c in results["collapsed"]] == [(COLLAPSING, 1)]
    assert f"collapsed: {COLLAPSING} seed 1" in result.stdout


def test_a_requeue_is_refused_while_the_old_start_still_holds_the_run_directory(slurm: dict[str, str],
                                                                               tmp_path: Path) -> None:
    """The job's earlier start lives on (on a node SLURM has lost; here a process outside SLURM that holds the run
    directory as that start): a requeued start stops at once, its task 0 with one line naming the holder, its task 1
    without writing anything; once that process is dead, the next requeue trains to the end."""
    outputs = tmp_path / "outputs"
    job = slurm_command(
        slurm, "sbatch", "--parsable", "--hold", f"--output={tmp_path}/slurm-%j.out",
        f"--export=ALL,DNABERT_PYTHON={sys.executable}", str(ROOT / "slurm" / "smoke_cpu.sbatch"), *TINY,
        f"paths.output_root={outputs}",
    ).strip()
    log = tmp_path / f"slurm-{job}.out"
    run = outputs / "demo" / f"job{job}"

    def ended(restarts: int) -> bool:
        state = job_state(slurm, job)
        return state["JobState"] in ("COMPLETED", "FAILED") and state["Restarts"] == str(restarts)

    def segment(restart: int) -> str:
        return log.read_text(errors="replace").split(f"restart {restart} on")[1].split(f"restart {restart + 1} on")[0]

    old_start = hold_run_dir(run, env={"SLURM_JOB_ID": job})
    try:
        slurm_command(slurm, "scontrol", "release", job)  # start 0, which the holder claims to be: refused too
        wait_until(lambda: ended(0), "the first start to end")
        assert job_state(slurm, job)["JobState"] == "FAILED"
        before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
        slurm_command(slurm, "scontrol", "requeue", job)
        wait_until(lambda: ended(1), "the requeued start to end")
        assert job_state(slurm, job)["JobState"] == "FAILED"
        assert "task 0: Exited with exit code 2" in segment(1), segment(1)[-3000:]
        refusals = [line for line in segment(1).splitlines() if "is in use by" in line]
        assert refusals == [f"dnabert: error: {run} is in use by a run on host {socket.gethostname()} "
                            f"(pid {old_start.pid}, SLURM job {job}) since {read_holder(run).since}; wait for it to "
                            f"end, stop it (scancel {job} / kill {old_start.pid} on {socket.gethostname()}), or "
                            "pick another run_name=."], segment(1)[-3000:]
        assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before  # neither task wrote there
    finally:
        old_start.kill()
        old_start.wait()
    slurm_command(slurm, "scontrol", "requeue", job)
    wait_until(lambda: ended(2), "the start after the holder's death to end", timeout=400)
    assert job_state(slurm, job)["JobState"] == "COMPLETED", segment(2)[-3000:]
    assert checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 12
    assert (read_holder(run).slurm_job, read_holder(run).slurm_restart) == (job, 2)


# ------------------------------------------------------------------------------------------------------ soak
SOAK_STEPS, SOAK_EVERY = 150, 5
SOAK = (f"max_steps={SOAK_STEPS}", f"callbacks.model_checkpoint.every_n_train_steps={SOAK_EVERY}",
        "trainer.val_every_n_steps=20", "logger=wandb")
USR1_REQUEUES = 5


def rank_process(job: str, rank: int) -> int:
    """The pid of one task's training process (not its data worker, whose parent is that process)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(item.split("=", 1) for item in environ.read_text().split("\0") if "=" in item)
            parent = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:  # ended while we looked
            continue
        if (variables.get("SLURM_JOB_ID") == job and variables.get("SLURM_PROCID") == str(rank)
                and b"train.py" in (environ.parent / "cmdline").read_bytes() and b"train.py" not in parent_command):
            return int(environ.parent.name)
    raise AssertionError(f"no training process of rank {rank} in job {job}")


def reproducible_metrics(directory: Path) -> pd.DataFrame:
    """The run's metrics history as the report reads it, without the columns that measure speed."""
    metrics = load_metrics(directory)
    return metrics[[name for name in sorted(metrics.columns) if not name.endswith("_per_s")]]


@pytest.mark.slow
def test_soak_requeued_six_times_and_losing_a_rank_ends_like_an_uninterrupted_run(slurm: dict[str, str],
                                                                                   tmp_path: Path) -> None:
    """A 2-task job is stopped by SIGUSR1 five times at varied steps (checkpoint at the step boundary, requeue
    itself), then loses rank 1 to SIGKILL (the other rank ends at once; the job fails and is requeued by hand, as
    a user would), and runs to the end. It must end as an uninterrupted 2-process run does."""
    wandb_env = {name: value for name, value in os.environ.items() if name.startswith("WANDB_")}
    reference = start_training(tmp_path / "reference", "reference", *SOAK, "trainer=cpu_ddp", "trainer.devices=2",
                               env=wandb_env)  # meanwhile: the job waits for SLURM most of the time
    try:
        soak(slurm, wandb_env, tmp_path, reference)
    finally:
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
            reference.wait()


def soak(slurm: dict[str, str], wandb_env: dict[str, str], tmp_path: Path, reference: subprocess.Popen) -> None:
    """The steps of the soak test above; the uninterrupted reference trains meanwhile."""
    outputs = tmp_path / "outputs"
    job = slurm_command(
        {**slurm, **wandb_env}, "sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out",
        f"--export=ALL,DNABERT_PYTHON={sys.executable}", str(ROOT / "slurm" / "smoke_cpu.sbatch"),
        *TINY, *SOAK, f"paths.output_root={outputs}",
    ).strip()
    log = tmp_path / f"slurm-{job}.out"
    run = outputs / "demo" / f"job{job}"
    checkpoints = run / "checkpoints"

    def segment(restart: int) -> str:
        """What the job printed in its start number `restart` (0: the first)."""
        text = log.read_text(errors="replace") if log.exists() else ""
        parts = re.split(r"job \d+ start \S+ restart (\d+) on", text)
        return next((body for number, body in zip(parts[1::2], parts[2::2], strict=True) if int(number) == restart),
                    "")

    def started_from(restart: int) -> int:
        wait_until(lambda: "Training from step" in segment(restart), f"start {restart} to train")
        return int(re.search(r"Training from step (\d+) ", segment(restart)).group(1))

    def newest_checkpoint() -> int:
        steps = [int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.ckpt")]
        return max(steps, default=0)

    def saved_after(step: int) -> None:
        wait_until(lambda: newest_checkpoint() > step, f"a checkpoint after step {step}")

    # 1. Five times: SIGUSR1 while training (as `--signal` sends near the time limit) -> checkpoint, requeue, resume.
    stops = []
    for restart in range(USR1_REQUEUES):
        resumed_at = started_from(restart)
        assert resumed_at == (stops[-1] if stops else 0), segment(restart)[-3000:]
        saved_after(resumed_at)
        slurm_command(slurm, "scancel", "--signal=USR1", job)
        wait_until(lambda r=restart: f"Requeued SLURM job {job}" in segment(r), "the job to requeue itself")
        stops.append(int(re.search(r"SIGUSR1: saved \S+last\.ckpt at step (\d+)", segment(restart)).group(1)))
    assert len(set(stops)) == USR1_REQUEUES and stops == sorted(stops) and stops[-1] < SOAK_STEPS, stops

    # 2. One rank dies without a word (the kernel's OOM killer, a node fault): the other ends at once, the job fails.
    resumed_at = started_from(USR1_REQUEUES)
    assert resumed_at == stops[-1]
    saved_after(resumed_at + SOAK_EVERY)  # by the second periodic checkpoint the first one's metrics are on disk
    os.kill(rank_process(job, 1), signal.SIGKILL)
    wait_until(lambda: job_state(slurm, job)["JobState"] == "FAILED", "the job to fail after losing a rank", 120)
    slurm_command(slurm, "scontrol", "requeue", job)
    assert resumed_at < started_from(USR1_REQUEUES + 1) < SOAK_STEPS

    # 3. It ends at max_steps as the uninterrupted run does.
    wait_until(lambda: job_state(slurm, job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), "the job to end")
    state = job_state(slurm, job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == str(USR1_REQUEUES + 1), segment(6)[-4000:]
    finish(reference)
    uninterrupted = run_dir(tmp_path / "reference", "reference")
    assert checkpoint(checkpoints / "last.ckpt")["global_step"] == SOAK_STEPS
    weights, expected = final_weights(run), final_weights(uninterrupted)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in weights)
    assert sorted(p.name for p in (outputs / "demo").iterdir()) == [f"job{job}"]
    run_id = (run / "wandb_run_id").read_text().strip()
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == USR1_REQUEUES + 2 and {p.name.rsplit("-", 1)[1] for p in wandb_runs} == {run_id}
    pd.testing.assert_frame_equal(reproducible_metrics(run), reproducible_metrics(uninterrupted))
