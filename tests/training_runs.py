"""Run `python train.py` as a user would (a real process), with a tiny model, and read what the run left behind."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import ROOT

TRAIN_PY = ROOT / "train.py"
# A model and batch small enough for a few seconds of CPU per run. Dropout stays on (hidden 0.1, attention 0.1):
# its masks derive from (seed, micro-batch), so runs of different process layouts, and resumed runs, must still
# agree number for number.
TINY = (
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
    "model.hidden_dropout_prob=0.1", "model.attention_probs_dropout_prob=0.1",
    "data.max_tokens=64", "data.micro_batch_size=4", "data.val_max_windows=16", "global_batch_size=8", "max_steps=12",
    "masking.final_rate_steps=4", "trainer.val_every_n_steps=6", "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=4", "export=false",
    "probe.path=null",  # the demo's downstream probe is tested in test_probe.py; elsewhere it would only cost time
)


def train_command(output_root: Path, run_name: str, *overrides: str, base: tuple[str, ...] = TINY) -> list[str]:
    """`base`: the overrides that come first (the tiny model and batch; () for an experiment's own settings)."""
    return [sys.executable, str(TRAIN_PY), *base, f"paths.output_root={output_root}", f"run_name={run_name}",
            *overrides]


def run_dir(output_root: Path, run_name: str) -> Path:
    return output_root / "demo" / run_name


def start_training(output_root: Path, run_name: str, *overrides: str, env: dict[str, str] | None = None,
                   cwd: Path | None = None, base: tuple[str, ...] = TINY) -> subprocess.Popen:
    """Start train.py; its output goes to <output_root>/<run_name>.<n>.log (read it with `log_of`)."""
    output_root.mkdir(parents=True, exist_ok=True)
    number = len(list(output_root.glob(f"{run_name}.*.log")))
    log = open(output_root / f"{run_name}.{number}.log", "w")  # noqa: SIM115  (closed when the process is waited)
    # Its own process group (start_new_session=True): a run that hangs is killed with all its ranks and data
    # workers (see `finish`).
    process = subprocess.Popen(train_command(output_root, run_name, *overrides, base=base), stdout=log,
                               stderr=subprocess.STDOUT, cwd=cwd or ROOT, env={**os.environ, **(env or {})},
                               start_new_session=True)
    process.log_path = Path(log.name)
    log.close()
    return process


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a run and return its output; a failed run fails the test with the end of its output."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"run hung for {timeout} s:\n{process.log_path.read_text()[-4000:]}") from None
    output = process.log_path.read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def train(output_root: Path, run_name: str, *overrides: str, **kwargs) -> str:
    return finish(start_training(output_root, run_name, *overrides, **kwargs))


def wait_for(path: Path, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{process.log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def final_weights(directory: Path) -> dict[str, torch.Tensor]:
    return checkpoint(directory / "checkpoints" / "last.ckpt")["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def metric_by_step(directory: Path, name: str) -> dict[int, float]:
    """A metric from the CSV log, one value per step; a resumed run re-logs steps after its checkpoint: last wins."""
    with open(directory / "csv" / "metrics.csv", newline="") as handle:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(handle) if row.get(name)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def distinct_runs(output_root: Path) -> list[Path]:
    """Every folder that holds a Hydra record of a run: one per run, however many processes it had."""
    return sorted({path.parent for path in output_root.rglob(".hydra")})


def hold_run_dir(directory: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process that claims `directory` as a run does (dnabert.run.run_claim) and then only lives: another run,
    as far as the directory is concerned. End it with os.kill(process.pid, signal.SIGKILL)."""
    code = ("import sys, time; from pathlib import Path; from dnabert.run.run_claim import claim_run_dir; "
            "claim_run_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(3600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, **(env or {})})
    assert process.stdout.readline().strip() == "held", "the holding process could not claim the directory"
    return process
