"""DDP over gloo on CPU: two processes (one node, or two "nodes" of one process) train exactly like one process with
gradient accumulation 2 on the same global batch, each rank reading its own shard; Hydra + DDP write ONE run dir.
Plus the launch checks that must fire before any rank starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnabert.errors import DnabertError
from dnabert.run.cluster import check_slurm_tasks
from dnabert.run.training import run
from tests.conftest import ROOT
from tests.training_runs import (
    TINY,
    assert_same_weights,
    distinct_runs,
    final_weights,
    finish,
    free_port,
    metric_by_step,
    run_dir,
    start_training,
    train,
)

# With the downstream probe (rank 0 alone) at every validation, to show it neither stalls nor skews the other ranks.
VALIDATE_OFTEN = ("trainer.val_every_n_steps=2", f"probe.path={ROOT / 'data' / 'tasks' / 'prom_core.tsv'}",
                  "probe.max_sequences=200")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, micro-batch 4, accumulation 2 = global batch 8."""
    output_root = tmp_path_factory.mktemp("single")
    output = train(output_root, "single", "trainer.devices=1", *VALIDATE_OFTEN)
    assert "micro 4 x accumulation 2 x devices 1 x nodes 1" in output
    return run_dir(output_root, "single")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two ranks on one node; run from an empty working directory to see whether anything lands there."""
    output_root, cwd = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("cwd")
    output = train(output_root, "ddp", "trainer=cpu_ddp", "trainer.devices=2", *VALIDATE_OFTEN, cwd=cwd)
    return output_root, cwd, output


def assert_same_loss_trajectory(directory: Path, reference: Path) -> None:
    """Held-out loss after every other step, and the data seen (summed over ranks), as in the reference.

    Weights are compared only between runs with the same number of ranks: summing gradients in another order
    changes the last bits, and Adam turns the sign of near-zero gradient entries into +-lr updates.
    """
    for metric, tolerance in (("val/loss", 1e-5), ("train/tokens_seen", 0), ("train/sequences_seen", 0)):
        got, expected = metric_by_step(directory, metric), metric_by_step(reference, metric)
        assert got.keys() == expected.keys() and len(got) >= 6, metric
        assert got == pytest.approx(expected, rel=tolerance, abs=tolerance), metric


def test_two_processes_train_like_one_with_accumulation(one_process: Path, two_processes: tuple) -> None:
    output_root, _, output = two_processes
    assert "micro 4 x accumulation 1 x devices 2 x nodes 1" in output
    assert "Starting with 2 processes" in output
    assert_same_loss_trajectory(run_dir(output_root, "ddp"), one_process)


def test_the_probe_scores_rank_zeros_model_like_one_process(one_process: Path, two_processes: tuple) -> None:
    """Logged at every validation, from the same weights up to the last bits; no Lightning advice to sync it (or
    the validation totals, already summed over ranks) in the log."""
    output_root, _, output = two_processes
    for metric in ("probe/auroc", "probe/acc"):
        got, expected = metric_by_step(run_dir(output_root, "ddp"), metric), metric_by_step(one_process, metric)
        assert got.keys() == expected.keys() and len(got) >= 6, metric
        assert got == pytest.approx(expected, abs=1e-3), metric
    assert "sync_dist" not in output


def test_hydra_and_ddp_write_one_run_dir(two_processes: tuple) -> None:
    """Lightning re-runs train.py for rank 1, so Hydra composes twice: still one run directory, nothing elsewhere."""
    output_root, cwd, _ = two_processes
    assert distinct_runs(output_root) == [run_dir(output_root, "ddp")]
    assert sorted(p.name for p in output_root.iterdir() if p.is_dir()) == ["demo"]
    assert list(cwd.iterdir()) == []


def test_two_nodes_of_one_process_train_like_one_node_of_two(one_process: Path, two_processes: tuple,
                                                             tmp_path: Path) -> None:
    """The multi-node path (num_nodes=2): node ranks from NODE_RANK, rendezvous at MASTER_ADDR:MASTER_PORT."""
    port = str(free_port())
    nodes = [
        start_training(tmp_path, "nodes", "trainer=cpu_ddp", "trainer.devices=1", "trainer.num_nodes=2",
                       *VALIDATE_OFTEN, env={"NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        for rank in (0, 1)
    ]
    outputs = [finish(node) for node in nodes]
    assert "micro 4 x accumulation 1 x devices 1 x nodes 2" in outputs[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    directory = run_dir(tmp_path, "nodes")
    assert_same_loss_trajectory(directory, one_process)
    assert_same_weights(final_weights(directory), final_weights(run_dir(two_processes[0], "ddp")))


def test_each_rank_reads_its_own_shard(compose_config, tmp_path: Path) -> None:
    """Global micro-batch j goes to rank j % 2: the two ranks' batches interleave into the one-process stream."""
    from dnabert.run.training import build_datamodule

    def first_windows(rank: int, world_size: int, count: int) -> list[list[int]]:
        cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "data.num_workers=1",
                             f"+data.rank={rank}", f"+data.world_size={world_size}", "+data.start_position=0")
        batches = iter(build_datamodule(cfg).train_dataloader())
        return [next(batches)["window"].tolist() for _ in range(count)]

    alone = first_windows(0, 1, 4)
    rank0, rank1 = first_windows(0, 2, 2), first_windows(1, 2, 2)
    assert alone == [rank0[0], rank1[0], rank0[1], rank1[1]]


# ------------------------------------------------------------------------------------- launch checks
def test_nccl_without_cuda_names_the_setting(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "trainer=gpu_multinode", "trainer.accelerator=cpu",
                         "trainer.devices=1", "trainer.num_nodes=1", "global_batch_size=8")
    with pytest.raises(DnabertError, match="trainer.strategy.process_group_backend=nccl needs CUDA"):
        run(cfg)


SLURM_STEP = {"SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "dnabert", "SLURM_STEP_ID": "0",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}


def test_slurm_task_count_must_match_devices_times_nodes(compose_config, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SLURM_STEP, "SLURM_NTASKS": "3"}.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config(*TINY, f"paths.output_root={tmp_path}", "trainer=cpu_ddp", "trainer.devices=2")
    with pytest.raises(DnabertError, match=r"SLURM started 3 tasks .* trainer.devices=2 x trainer.num_nodes=1"):
        run(cfg)


def test_slurm_without_srun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    check_slurm_tasks(num_nodes=1, devices=2)  # a matching srun step is fine
    monkeypatch.delenv("SLURM_STEP_ID")  # the batch script itself, not an srun task
    with pytest.raises(DnabertError, match="not started by srun"):
        check_slurm_tasks(num_nodes=1, devices=2)
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's rule: an interactive allocation is not SLURM
    check_slurm_tasks(num_nodes=1, devices=2)
