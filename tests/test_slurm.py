"""The SLURM path against a real SLURM on this machine (slurm/local/up.sh: Debian's slurm-wlm + munge, installed with
apt-get when missing): the CPU smoke script runs 2 tasks (DDP over gloo); SIGUSR1 (what `--signal` sends near the
time limit) makes it checkpoint at a step boundary and requeue itself; `scontrol requeue` from outside stops it
mid-run; each time the requeued job continues in the same run directory from the saved step and finally finishes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.training_runs import TINY, checkpoint, free_port, metric_by_step, wait_for

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
