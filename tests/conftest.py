"""Shared fixtures: composing the project's Hydra config, hermetic caches, the bundled genome."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dnabert.data.tokenizers.special import CLS_ID, PAD_ID
from dnabert.run.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEMO_FASTA = ROOT / "data" / "genomes" / "human_chr22_20-21M.fa"

os.environ.setdefault("DNABERT_ROOT", str(ROOT))
register_resolvers()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n`: one test process per core already; a second torch thread in each (and in the runs they start)
    # would only wait for a busy core, which makes the tests' tiny models many times slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def hermetic_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tools from writing into the user's home: caches and wandb go to a temporary folder."""
    scratch = tmp_path_factory.getbasetemp() / "env"
    for var in ("DNABERT_CACHE_DIR", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(var, str(scratch / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """Compose configs/train.yaml with overrides, as `python train.py <overrides>` would."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)

    return _compose


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED


def tiny_run_overrides(output_root: Path, run_name: str = "test", **extra: object) -> list[str]:
    """A seconds-long run on the bundled genome: a 1-layer model, short windows, small batches."""
    settings: dict[str, object] = {
        "model.hidden_size": 32, "model.num_hidden_layers": 1, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "data.max_tokens": 64, "data.micro_batch_size": 4,
        "data.num_workers": 0, "data.val_max_windows": 16, "global_batch_size": 8, "max_steps": 6,
        "masking.final_rate_steps": 2, "optim.warmup_steps": 2, "trainer.val_every_n_steps": 3,
        "trainer.log_every_n_steps": 1, "trainer.enable_model_summary": False,
        "callbacks.model_checkpoint.every_n_train_steps": 2, "export": False,
        "run_name": run_name, "paths.output_root": str(output_root),
        "probe.path": "null",  # the demo's downstream probe is tested in test_probe.py
    }
    settings.update(extra)
    return [f"{key}={value}" for key, value in settings.items()]


def windows_in_rows(input_ids: torch.Tensor) -> list[tuple[int, ...]]:
    """The token sequence of every window of (possibly packed) rows, split at each [CLS]."""
    windows = []
    for row in input_ids.tolist():
        real = [token for token in row if token != PAD_ID]
        starts = [index for index, token in enumerate(real) if token == CLS_ID] + [len(real)]
        windows += [tuple(real[start:end]) for start, end in zip(starts, starts[1:], strict=False)]
    return windows


def write_text(path: Path, text: str, bgzip: bool = False) -> Path:
    """A text file as it is, or compressed with bgzip (BGZF, what samtools and tabix write)."""
    if bgzip:
        from Bio import bgzf  # only the tests that write bgzip files need Biopython

        with bgzf.BgzfWriter(str(path), "wb") as handle:
            handle.write(text.encode())
    else:
        path.write_text(text)
    return path
