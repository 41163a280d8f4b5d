"""A batch that produces NaN must not corrupt the weights; a run that keeps producing NaN stops cleanly."""

from __future__ import annotations

import logging

import pytest
import torch

from dnabert.errors import DnabertError
from dnabert.run.checkpoints import checkpoint_is_readable, read_checkpoint
from dnabert.run.training import build_datamodule, build_module, build_trainer, make_plan
from dnabert.tasks.pretrain import MaskedLMModule
from tests.conftest import tiny_run_overrides


def poison_steps(module: MaskedLMModule, steps: set[int] | None) -> None:
    """Make the loss NaN at the given optimiser steps (all steps when None), as a bad batch would."""
    original = module.masked_lm_outputs

    def poisoned(batch):
        outputs = original(batch)
        if module.trainer.training and (steps is None or module.global_step in steps):
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs

    module.masked_lm_outputs = poisoned


def train(compose_config, tmp_path, poisoned: set[int] | None, **extra):
    cfg = compose_config(*tiny_run_overrides(tmp_path, logger="none", **extra))
    plan = make_plan(cfg)
    module = build_module(cfg, plan)
    poison_steps(module, poisoned)
    snapshots: dict[int, torch.Tensor] = {}

    trainer = build_trainer(cfg, plan)
    original_hook = module.on_train_batch_start

    def record(batch, batch_idx):
        snapshots.setdefault(module.global_step, torch.cat([p.detach().flatten().clone()
                                                            for p in module.model.parameters()]))
        return original_hook(batch, batch_idx)

    module.on_train_batch_start = record
    trainer.fit(module, datamodule=build_datamodule(cfg))
    return module, snapshots, plan


def test_nan_step_is_skipped_and_weights_stay_intact(compose_config, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO), \
            pytest.warns(UserWarning, match=r"Non-finite loss or gradient at step 2: update skipped.*Windows"):
        module, snapshots, _ = train(compose_config, tmp_path, poisoned={2})
    assert "report: none (it reads the CSV log" in caplog.text  # logger=none: said, not a warning
    assert module.skipped_steps == 1 and module.global_step == 6
    assert torch.equal(snapshots[2], snapshots[3]), "the poisoned step changed the weights"
    assert not torch.equal(snapshots[1], snapshots[2]) and not torch.equal(snapshots[3], snapshots[4])
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_consecutive_nan_steps_stop_with_a_clear_message(compose_config, tmp_path) -> None:
    with pytest.raises(DnabertError, match="3 consecutive optimiser steps had non-finite gradients"), \
            pytest.warns(UserWarning, match="Non-finite"):
        train(compose_config, tmp_path, poisoned={2, 3, 4, 5}, max_consecutive_nonfinite=3)
    checkpoints = tmp_path / "demo" / "test" / "checkpoints"
    assert checkpoint_is_readable(checkpoints / "last.ckpt")
    last = read_checkpoint(checkpoints / "last.ckpt")["state_dict"]
    good = read_checkpoint(checkpoints / "step-0000002.ckpt")["state_dict"]
    # Steps 2 and 3 were skipped, so the newest checkpoint holds exactly the weights of the last good step.
    assert all(torch.equal(last[name], good[name]) for name in good)
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())
