"""Compute estimate: parameter count against real models, the paper's run against published arithmetic."""

from __future__ import annotations

import math

import pytest
from transformers import BertConfig, BertForMaskedLM

from dnabert.errors import DnabertError
from dnabert.run.estimate import count_parameters, estimate, format_estimate, peak_flops_for, token_length_moments

# BERT-base with the k=6 DNABERT vocabulary (4^6 + 5 rows): the paper's model.
BERT_BASE_K6 = BertConfig(vocab_size=4101)
# The paper's run: 2000 sequences per step (8 GPUs x 10 x 25 accumulation), 120k steps.
PAPER_RUN = dict(k=6, max_tokens=512, global_batch_size=2000, max_steps=120_000, micro_batch_size=10,
                 devices=8, num_nodes=1)


def unique_parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())  # tied weights are yielded once


def test_parameter_count_matches_transformers_bert_for_masked_lm():
    small = BertConfig(vocab_size=69, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=96)
    assert count_parameters(small)[0] == unique_parameter_count(BertForMaskedLM(small))
    assert count_parameters(BERT_BASE_K6)[0] == 89_196_549


def test_parameter_count_matches_dnabert_model():
    model = pytest.importorskip("dnabert.models.dnabert.model")
    for name, k in (("tiny", 3), ("small", 6)):
        config = model.preset(name, k)
        assert count_parameters(config)[0] == unique_parameter_count(model.DnaBertForMaskedLM(config))


def test_forward_flops_match_model_card():
    est = estimate(BERT_BASE_K6, **PAPER_RUN)
    # MultiMolecule DNABERT model card: about 96.9 GFLOPs forward per 512-token sequence.
    assert est.forward_flops_full_sequence == pytest.approx(96.9e9, rel=0.10)


def test_paper_run_tokens_flops_and_h100_wall_time():
    est = estimate(BERT_BASE_K6, **PAPER_RUN, gpu_name="NVIDIA H100 80GB HBM3", mfu=0.45)
    assert est.total_sequences == 240_000_000
    assert est.accumulate_grad_batches == 25
    assert est.mean_tokens_per_sequence == pytest.approx(0.75 * 512, rel=0.01)
    assert est.total_tokens == pytest.approx(92e9, rel=0.02)
    assert est.train_flops == pytest.approx(5e19, rel=0.15)
    assert est.train_flops_padded == pytest.approx(7e19, rel=0.15)
    assert est.train_flops_per_token == pytest.approx(0.57e9, rel=0.05)
    assert 4 * 3600 <= est.wall_seconds <= 5 * 3600
    assert est.wall_seconds_padded > est.wall_seconds
    # 16 bytes/param of optimiser state for 89.2M parameters, plus activations: a few GiB, far below 80 GB.
    assert est.memory_states_bytes == 16 * 89_196_549
    assert 2e9 < est.memory_per_gpu_bytes < 10e9


def test_materialised_attention_adds_score_memory():
    flash = estimate(BERT_BASE_K6, **PAPER_RUN)
    eager = estimate(BERT_BASE_K6, **PAPER_RUN, materialised_attention=True)
    assert eager.memory_activations_bytes - flash.memory_activations_bytes == 5 * 12 * 512**2 * 10 * 12


def test_measured_throughput_replaces_projection():
    est = estimate(BERT_BASE_K6, **PAPER_RUN, gpu_name="h100", measured_tokens_per_s=1e6)
    assert est.wall_seconds == pytest.approx(est.total_tokens / 1e6)
    assert est.mfu == pytest.approx(1e6 * est.train_flops_per_token / (8 * 989e12))


def test_length_rules():
    mean, mean_square = token_length_moments(6, 512, "fixed")
    assert (mean, mean_square) == (512, 512**2)
    mean, mean_square = token_length_moments(3, 512, "original")
    assert mean == pytest.approx(384, abs=2)
    assert mean_square > mean**2  # lengths vary
    with pytest.raises(DnabertError, match="length_rule"):
        token_length_moments(6, 512, "ragged")


def test_gpu_table_and_unknown_gpu():
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA A10") == 125e12
    assert peak_flops_for("NVIDIA GeForce RTX 2080 Ti") == 53.8e12
    with pytest.raises(DnabertError, match="gpu_name"):
        peak_flops_for("Voodoo 2")


def test_bad_batch_split_is_refused():
    with pytest.raises(DnabertError, match="multiple"):
        estimate(BERT_BASE_K6, **{**PAPER_RUN, "micro_batch_size": 7})


def test_format_estimate_reports_the_numbers():
    text = format_estimate(estimate(BERT_BASE_K6, **PAPER_RUN, gpu_name="h100", mfu=0.45))
    assert "89,196,549" in text and "240,000,000 sequences" in text and "4.04 h" in text
    assert "unknown" in format_estimate(estimate(BERT_BASE_K6, **PAPER_RUN))
    assert not math.isnan(estimate(BERT_BASE_K6, **PAPER_RUN, gpu_name="v100").wall_seconds)


def test_estimate_from_the_paper_experiment_config(compose_config):
    from dnabert.run.estimate import estimate_from_config

    cfg = compose_config("experiment=dnabert6_paper", "estimate_gpu=h100", "estimate_mfu=0.45")
    text = estimate_from_config(cfg, devices=8, num_nodes=1)
    assert "89,196,549" in text and "240,000,000 sequences" in text and "4.04 h" in text


def test_training_flop_formula_matches_torch_flop_counter():
    """Forward + backward of the real model, counted by torch: the formula is exact for equal-length rows."""
    torch = pytest.importorskip("torch")
    model_module = pytest.importorskip("dnabert.models.dnabert.model")
    from torch.utils.flop_counter import FlopCounterMode

    config = model_module.DnaBertConfig(vocab_size=69, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64)
    model = model_module.DnaBertForMaskedLM(config)
    batch, length = 2, 64
    input_ids = torch.randint(5, 69, (batch, length))
    input_ids[:, 0], input_ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    masked = torch.zeros(batch, length, dtype=torch.bool)
    masked[:, 1:32] = True  # 31 of the 62 k-mer tokens: mask rate 0.5
    with FlopCounterMode(display=False) as counter:
        model(input_ids, masked_positions=masked).sum().backward()
    est = estimate(config, 3, length, global_batch_size=batch, max_steps=1, micro_batch_size=batch, devices=1,
                   num_nodes=1, length_rule="fixed", mask_rate=0.5)
    assert est.train_flops_per_sequence == pytest.approx(counter.get_total_flops() / batch, rel=1e-6)
