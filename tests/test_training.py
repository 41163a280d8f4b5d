"""The training path: paper config resolution, optimiser groups and schedule, loss, and clear bad-input errors."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import IGNORE_INDEX
from dnabert.run.training import build_module, make_plan
from tests.conftest import ROOT


def attach_trainer(module: torch.nn.Module, max_steps: int) -> None:
    module.trainer = SimpleNamespace(max_steps=max_steps, training=True, precision="32-true")


def test_paper_experiment_resolves_to_the_recipe(compose_config) -> None:
    cfg = compose_config("experiment=dnabert6_paper", "data.fasta=/data/GRCh38.fa")
    accumulation = cfg.derived.accumulate_grad_batches
    assert cfg.data.micro_batch_size * accumulation * cfg.trainer.devices * cfg.trainer.num_nodes == 2000
    assert (cfg.data.micro_batch_size, accumulation, cfg.trainer.devices) == (10, 25, 8)
    assert cfg.max_steps == 120_000 and cfg.tokenizer.k == 6 and cfg.trainer.strategy == "ddp"
    assert (cfg.model.num_hidden_layers, cfg.model.hidden_size, cfg.model.num_attention_heads,
            cfg.model.intermediate_size, cfg.model.max_position_embeddings) == (12, 768, 12, 3072, 512)
    assert cfg.derived.mask_switch_step == 100_000 and cfg.derived.vocab_size == 4101
    assert tuple(cfg.optim.betas) == (0.9, 0.98) and cfg.optim.eps == 1e-6 and cfg.optim.weight_decay == 0.01
    assert cfg.trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("k", [3, 4, 5])
def test_other_k_paper_experiments(compose_config, k: int) -> None:
    cfg = compose_config(f"experiment=dnabert{k}_paper", "data.fasta=/x.fa")
    assert cfg.tokenizer.k == cfg.data.k == k and cfg.derived.vocab_size == 4**k + 5 and cfg.global_batch_size == 2000


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_paper_learning_rate_and_mask_schedule(compose_config, k: int) -> None:
    """The original command's schedule (10k warm-up to 4e-4, linear decay reaching 0 at its max_steps 200000),
    stopped at 120k like the released checkpoints; the 20% masking still covers the last 20k steps of the run.
    On a tiny model: the schedules do not depend on the model size."""
    cfg = compose_config(f"experiment=dnabert{k}_paper", "data.fasta=/x.fa", "model=tiny", "trainer=cpu",
                         "trainer.devices=1", "data.micro_batch_size=2000")
    module = build_module(cfg, make_plan(cfg))
    attach_trainer(module, cfg.max_steps)
    assert cfg.max_steps == 120_000 and cfg.optim.total_steps == 200_000
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    expected = {0: 0.0, 5_000: 2e-4, 10_000: 4e-4, 100_000: 4e-4 * 100_000 / 190_000,
                120_000: 4e-4 * 80_000 / 190_000, 200_000: 0.0}
    lambdas = scheduler.lr_lambdas[0]
    for step, lr in expected.items():
        assert 4e-4 * lambdas(step) == pytest.approx(lr, abs=1e-12), step
    assert 4e-4 * lambdas(120_000) == pytest.approx(1.684e-4, abs=1e-7)  # where the released checkpoints stopped
    assert module.schedule.rate_at(99_999) == 0.15
    assert module.schedule.rate_at(100_000) == module.schedule.rate_at(119_999) == 0.20


def test_decay_horizon_is_separate_from_stopping_step(compose_config) -> None:
    cfg = compose_config("optim.total_steps=200000", "optim.warmup_steps=10000")
    module = build_module(cfg, make_plan(cfg))
    attach_trainer(module, 120_000)
    lambdas = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lambdas(120_000) == pytest.approx(80_000 / 190_000)


def test_no_decay_groups_hold_exactly_biases_and_layernorm_weights(compose_config) -> None:
    cfg = compose_config()
    module = build_module(cfg, make_plan(cfg))
    attach_trainer(module, 100)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names == {n for n in names.values() if n.endswith(".bias") or "LayerNorm" in n}
    assert all(not n.endswith(".bias") and "LayerNorm" not in n for n in (names[id(p)] for p in decay["params"]))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))


def test_loss_equals_hand_computed_cross_entropy_on_masked_positions(compose_config) -> None:
    cfg = compose_config("model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0")
    module = build_module(cfg, make_plan(cfg)).eval()
    generator = torch.Generator().manual_seed(0)
    kmers = torch.randint(NUM_SPECIAL_TOKENS, 4101, (3, 20), generator=generator)
    input_ids = torch.cat([torch.full((3, 1), CLS_ID), kmers, torch.full((3, 1), SEP_ID)], dim=1)
    input_ids[2, 15:] = PAD_ID
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    positions = [(0, 3), (0, 4), (1, 10), (2, 7)]
    for row, col in positions:
        labels[row, col] = input_ids[row, col]
        input_ids[row, col] = MASK_ID
    outputs = module.masked_lm_outputs({"input_ids": input_ids, "labels": labels})
    full_logits = module.model(input_ids)
    expected = sum(
        -F.log_softmax(full_logits[row, col], dim=-1)[labels[row, col]] for row, col in positions
    ) / len(positions)
    assert outputs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert outputs["count"].item() == len(positions)


def test_batch_that_does_not_divide_names_the_settings(compose_config) -> None:
    cfg = compose_config("global_batch_size=33")
    with pytest.raises(DnabertError, match=r"global_batch_size=33.*micro_batch_size.*trainer.devices"):
        make_plan(cfg)


def test_more_devices_than_the_machine_has(compose_config) -> None:
    cfg = compose_config("trainer.devices=4096", "global_batch_size=65536")
    with pytest.raises(DnabertError, match="trainer.devices=4096"):
        make_plan(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpus_asked_for_without_cuda(compose_config) -> None:
    cfg = compose_config("experiment=dnabert6_paper", "data.fasta=/x.fa")
    with pytest.raises(DnabertError, match="no CUDA GPU is visible.*trainer=cpu"):
        make_plan(cfg)


def test_masking_switch_beyond_the_run(compose_config) -> None:
    cfg = compose_config("masking.final_rate_steps=1000")
    with pytest.raises(DnabertError, match="masking.final_rate_steps=1000"):
        make_plan(cfg)


def test_vocab_size_must_fit_k(compose_config) -> None:
    cfg = compose_config("model.vocab_size=69")
    with pytest.raises(DnabertError, match="model.vocab_size=69 does not fit k=6"):
        build_module(cfg, make_plan(cfg))


def run_train(*overrides: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["global_batch_size=33"], "global_batch_size=33 is not a multiple"),
        (["data.fasta=/nonexistent/genome.fa", "paths.output_root=OUT"], "/nonexistent/genome.fa"),
        (["trainer.devices=4096"], "trainer.devices=4096"),
        (["paths.output_root=/proc/forbidden"], "paths.output_root=/proc/forbidden"),
        (["data.length_rule=sideways"], "data.length_rule"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, overrides: list[str], message: str) -> None:
    overrides = [o.replace("OUT", str(tmp_path)) for o in overrides]
    result = run_train(*overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("dnabert: error:") or "dnabert: error:" in result.stderr


def test_cli_unknown_key_is_hydras_message() -> None:
    result = run_train("data.not_a_key=1")
    assert result.returncode != 0 and "not_a_key" in result.stderr


def test_cfg_job_shows_derived_values() -> None:
    result = run_train("experiment=dnabert6_paper", "data.fasta=/data/GRCh38.fa", "--cfg", "job", "--resolve")
    assert result.returncode == 0, result.stderr
    derived = OmegaConf.create(result.stdout).derived
    assert derived.accumulate_grad_batches == 25 and derived.mask_switch_step == 100_000


def test_uniform_baseline() -> None:
    from dnabert.tasks.pretrain import uniform_loss

    assert uniform_loss(6) == pytest.approx(6 * math.log(4))
