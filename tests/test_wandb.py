"""wandb without network or key: offline runs in the run directory, one per run (rank 0 only), the same wandb id
after a resume, each step logged once across a kill and resume; a key without a reachable server falls back to
offline with one warning, or is refused when the user insisted on online; online without credentials is refused
before any DDP rank starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from dnabert.errors import DnabertError
from dnabert.run.cluster import wandb_run_id
from dnabert.run.training import run
from dnabert.run.wandb_records import STEP_KEY, history_rows, logged_steps, run_logs, summary_steps
from tests.training_runs import TINY, free_port, metric_by_step, run_dir, start_training, train

# A compute node's view: a key, and a W&B server nobody answers for (a closed port here, never the internet).
KEY_WITHOUT_SERVER = {"WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567", "WANDB_MODE": ""}


def unreachable_server() -> str:
    return f"http://127.0.0.1:{free_port()}"


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def offline_runs(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*"))


def test_offline_wandb_logs_rank_zero_only_and_keeps_its_id_across_a_resume(tmp_path: Path) -> None:
    """The first run has a key but no server: it goes offline by itself, says so once, and trains."""
    server = unreachable_server()
    output = train(tmp_path, "tracked", "logger=wandb", "trainer=cpu_ddp", "trainer.devices=2",
                   env={**KEY_WITHOUT_SERVER, "WANDB_BASE_URL": server})
    directory = run_dir(tmp_path, "tracked")
    run_id = (directory / "wandb_run_id").read_text().strip()
    offline_glob = f"{directory}/wandb/offline-run-*-{run_id}"
    warnings = [line for line in output.splitlines() if "cannot be reached" in line]
    assert warnings == [f"wandb: {server} cannot be reached from {socket.gethostname()} "
                        f"(127.0.0.1:{server.rsplit(':', 1)[1]}: Connection refused); logging offline to "
                        f"{offline_glob}. Upload it later with: wandb sync {offline_glob}"]
    first = offline_runs(directory)
    assert len(first) == 1 and first[0].name.endswith(f"-{run_id}")  # two ranks, one wandb run
    # What `wandb sync` uploads: the run's record file (protobuf; its strings are stored as they are).
    records = b"".join(path.read_bytes() for path in first[0].glob("run-*.wandb"))
    assert b"run_dir" in records and str(directory).encode() in records  # the run directory
    assert b"global_batch_size" in records and b"micro_batch_size" in records  # the resolved config
    assert b"train/loss" in records and b"val/loss" in records  # metrics
    assert list(first[0].glob("files/media/images/report/curves_*.png"))  # the run report's figure

    # Resuming (here with one process and accumulation 2 instead of two processes) continues the same wandb run.
    output = train(tmp_path, "tracked", "logger=wandb", "trainer.devices=1", "max_steps=16")
    assert "Restoring states from the checkpoint path" in output
    runs = offline_runs(directory)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    assert max(metric_by_step(directory, "train/loss")) == 15  # the CSV log goes on beside wandb


def test_a_killed_offline_run_logs_each_step_once(tmp_path: Path) -> None:
    """Killed (SIGKILL) after wandb holds steps past the newest checkpoint, then resumed: across the run's offline
    folders, which `wandb sync <run dir>/wandb/offline-run-*-<id>` uploads as one run, each metric has each step
    once, with the values of the CSV history (read from wandb's own transaction logs)."""
    # Checkpoints 12 steps apart: the kill lands past the step-12 checkpoint with ten steps to spare before the next,
    # however far the test's polling lags behind training.
    overrides = ("logger=wandb", "max_steps=36", "callbacks.model_checkpoint.every_n_train_steps=12")
    # wandb writes its transaction log every 15 s by default; often here, so that the kill can wait for it.
    env = {"WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "0.1"}
    process = start_training(tmp_path, "killed", *overrides, env=env)
    directory = run_dir(tmp_path, "killed")
    deadline = time.monotonic() + 180
    while logged_steps(run_logs(directory / "wandb", "*")).get("train/loss", -1) < 13:  # checkpoints: 12, 24, 36
        assert process.poll() is None and time.monotonic() < deadline, process.log_path.read_text()[-4000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # train.py only: its wandb service ends by itself
    process.wait()
    deadline = time.monotonic() + 60
    while process_group_alive(process.pid):
        assert time.monotonic() < deadline, "the killed run's wandb service did not end"
        time.sleep(0.1)
    output = train(tmp_path, "killed", *overrides, env=env)
    resumed_from = int(re.search(r"Training from step (\d+)", output).group(1))

    run_id = (directory / "wandb_run_id").read_text().strip()
    logs = run_logs(directory / "wandb", run_id)
    assert [log.parent for log in logs] == offline_runs(directory) == sorted(
        (directory / "wandb").glob(f"offline-run-*-{run_id}"))  # what the documented `wandb sync` glob names
    assert len(logs) == 2
    assert logged_steps(logs[:1])["train/loss"] >= resumed_from, "no step was logged twice: nothing was tested"
    rows = [row for path in logs for row in history_rows(path)]
    for metric in ("train/loss", "val/loss", "lr"):
        steps = [int(row[STEP_KEY]) for row in rows if metric in row]
        assert len(steps) == len(set(steps)), f"{metric} logged twice at a step: {sorted(steps)}"
        logged = {int(row[STEP_KEY]): row[metric] for row in rows if metric in row}
        assert logged == pytest.approx(metric_by_step(directory, metric), rel=1e-6), metric
    assert sorted(int(row[STEP_KEY]) for row in rows if "train/loss" in row) == list(range(36))


def test_a_resumed_online_run_holds_what_its_summary_shows() -> None:
    """Online, the server's summary is all a resumed process knows: each metric in it counts as held up to the
    last logged step; a run that logged no step yet holds nothing."""
    summary = {"train/loss": 7.9, "val/loss": 8.1, STEP_KEY: 41, "epoch": 0, "_runtime": 3.0, "_step": 60}
    assert summary_steps(summary) == {"train/loss": 41, "val/loss": 41}
    assert summary_steps({"_runtime": 3.0}) == {}


def test_online_without_credentials_is_refused_before_launch(compose_config, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "logger=wandb", "trainer=cpu_ddp")
    with pytest.raises(DnabertError, match=r"no W&B API key.*WANDB_MODE=offline.*wandb sync"):
        run(cfg)
    # With a key it passes the check (nothing is contacted here: the check only looks for credentials).
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    from dnabert.run.cluster import check_wandb

    check_wandb(cfg.logger)


def test_online_insisted_on_without_a_reachable_server_is_refused_before_launch(
        compose_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEY_WITHOUT_SERVER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_BASE_URL", unreachable_server())
    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "logger=wandb", "logger.wandb.mode=online")
    with pytest.raises(DnabertError, match=r"set to online .* cannot be reached .*Connection refused.*drop"):
        run(cfg)
    assert not (run_dir(tmp_path, "default") / "checkpoints").exists()  # nothing trained


def test_run_id_is_created_once_per_run_directory(tmp_path: Path) -> None:
    first = wandb_run_id(str(tmp_path / "run"))
    assert wandb_run_id(str(tmp_path / "run")) == first
    assert wandb_run_id(str(tmp_path / "other")) != first
