"""The estimate's short training trial: what it measures, and how its numbers become memory and wall time."""

from __future__ import annotations

import pytest
import torch

from dnabert.data.tokenizers.kmer import ids_to_kmers, kmers_to_sequence, tokenize
from dnabert.data.tokenizers.special import CLS_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.run.estimate import estimate, format_trial, train_flops_per_sequence
from dnabert.run.trial import TrialResult, full_length_rows, run_trial
from dnabert.tasks.pretrain import MaskedLMModule
from tests.test_estimate import BERT_BASE_K6, PAPER_RUN

TINY = {"vocab_size": 4101, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_module() -> MaskedLMModule:
    return MaskedLMModule(k=6, model_config=TINY, masking={"rate": 0.15, "final_rate": 0.2},
                            optim={"lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
                                   "warmup_steps": 1})


def test_trial_rows_are_real_k_mer_sequences_of_full_length():
    rows = full_length_rows(k=6, micro_batch_size=3, row_tokens=64)
    assert rows.shape == (3, 64)
    assert (rows[:, 0] == CLS_ID).all() and (rows[:, -1] == SEP_ID).all()
    for row in rows.tolist():
        sequence = kmers_to_sequence(ids_to_kmers(row[1:-1], 6))  # raises if neighbours do not overlap
        assert tokenize(sequence, 6).tolist() == row


def test_cpu_trial_trains_and_reports_no_gpu_memory():
    module = tiny_module()
    before = [parameter.detach().clone() for parameter in module.parameters()]
    result = run_trial(module, micro_batch_size=4, row_tokens=64, device=torch.device("cpu"),
                       precision="32-true", warmup_steps=1, timed_steps=2)
    assert result.device_name == "CPU" and result.peak_allocated_bytes is None
    assert result.tokens_per_s == pytest.approx(2 * 4 * 64 / result.seconds)
    changed = sum(not torch.equal(old, new) for old, new in zip(before, module.parameters(), strict=True))
    assert changed == len(before)  # every parameter took optimiser steps (none is frozen or skipped)


def test_trial_numbers_become_mfu_memory_and_wall_time():
    est = estimate(BERT_BASE_K6, **PAPER_RUN)
    flops_per_row = train_flops_per_sequence(BERT_BASE_K6, 512, 512**2, 0.15)
    # Chosen so the trial ran at exactly 400 TFLOP/s on an H100: 40.4% of its 989 TFLOP/s peak.
    seconds = 4 * 10 * flops_per_row / 400e12
    trial = TrialResult("NVIDIA H100 80GB HBM3", micro_batch_size=10, row_tokens=512, timed_steps=4,
                        seconds=seconds, peak_allocated_bytes=9 * 2**30, peak_reserved_bytes=11 * 2**30)
    text = format_trial(est, trial, BERT_BASE_K6, 0.15)
    assert "400 TFLOP/s (40% MFU)" in text
    assert "9.0 GiB peak allocated, 11.0 GiB reserved" in text
    hours = est.train_flops / (8 * 400e12) / 3600
    assert f"{hours:.2f} h on 8 device(s)" in text


def test_estimate_runs_a_trial_only_when_asked_or_on_a_gpu(compose_config, capsys):
    from dnabert.run.training import run

    overrides = ("estimate=true", "model.num_hidden_layers=1", "data.micro_batch_size=4", "global_batch_size=8")
    run(compose_config(*overrides, "estimate_trial=true"))
    measured = capsys.readouterr().out
    assert "trial               4 optimiser steps of 4 x 64-token rows on CPU" in measured
    assert "memory (trial)      not measured on a CPU" in measured
    run(compose_config(*overrides))  # auto: this machine has no GPU -> arithmetic only
    assert "trial" not in capsys.readouterr().out
    with pytest.raises(DnabertError, match="estimate_trial='maybe'"):
        run(compose_config(*overrides, "estimate_trial=maybe"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trial_memory_is_within_the_estimate_s_range():
    """BERT-base k=6 at the paper's micro-batch: measured peak and the formula agree within a factor 2."""
    from dnabert.models.dnabert.model import preset

    config = preset("bert_base", 6)
    module = MaskedLMModule(k=6, model_config=config.to_dict(), masking={"rate": 0.15, "final_rate": 0.2},
                              optim={"lr": 4e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
                                     "warmup_steps": 1})
    result = run_trial(module, 10, 512, torch.device("cuda", 0), precision="bf16-mixed")
    est = estimate(config, **PAPER_RUN)
    assert est.memory_states_bytes < result.peak_allocated_bytes <= result.peak_reserved_bytes
    assert 0.5 < result.peak_allocated_bytes / est.memory_per_gpu_bytes < 2.0
