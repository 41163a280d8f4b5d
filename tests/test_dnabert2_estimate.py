"""Compute estimate for DNABERT-2: parameter and FLOP formulas against the real models, torch's counter, the card."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dnabert.errors import DnabertError
from dnabert.models.components import count_parameters as model_parameters
from dnabert.models.dnabert2.model import DnaBert2Config, DnaBert2ForMaskedLM, preset
from dnabert.run.estimate import count_parameters, estimate, estimate_from_config
from dnabert.tools.estimate import main

# DNABERT-2's published run: batch 4096 on 8 GPUs (the micro-batch split is not published), 500k steps, 128 tokens.
PAPER_RUN = dict(max_tokens=128, global_batch_size=4096, max_steps=500_000, micro_batch_size=64, devices=8,
                 num_nodes=1)


def test_parameter_count_matches_our_model_and_multimolecules():
    for name in ("tiny", "small"):
        config = preset(name, vocab_size=300)
        assert count_parameters(config)[0] == model_parameters(DnaBert2ForMaskedLM(config))
    assert count_parameters(preset("base"))[0] == 117_074_176  # 117.07 M on the card
    multimolecule = pytest.importorskip("multimolecule")
    theirs = multimolecule.DnaBert2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=96)
    assert count_parameters(theirs)[0] == model_parameters(multimolecule.DnaBert2ForMaskedLM(theirs))


def test_forward_flops_match_the_model_card():
    est = estimate(preset("base"), None, **{**PAPER_RUN, "max_tokens": 512})
    assert est.forward_flops_full_sequence == pytest.approx(125.83e9, rel=0.005)  # MultiMolecule card, 512 tokens


def test_the_issues_h100_arithmetic():
    """Issue 14: at 128 tokens about 0.7 GFLOPs of training per token, so one H100 at 50% MFU consumes about
    5,500 sequences/s; every window is full (BPE windows are cut to the token budget)."""
    est = estimate(preset("base"), None, **PAPER_RUN, gpu_name="h100", mfu=0.5)
    assert est.mean_tokens_per_sequence == 128 and est.train_flops == est.train_flops_padded
    assert est.train_flops_per_token == pytest.approx(0.70e9, rel=0.01)
    assert est.tokens_per_s / 8 / 128 == pytest.approx(5_500, rel=0.02)
    assert est.total_tokens == 500_000 * 4096 * 128
    assert est.memory_states_bytes == 16 * 117_074_176
    # bf16 activations: 50 h per token and layer with the GLU feed-forward (BERT's 34 h), plus one ALiBi bias
    assert est.memory_activations_bytes == (50 * 768 * 12 * 128 * 64 + 2 * 12 * 128**2 * 64
                                            + 6 * 0.15 * 128 * 64 * 4096)


def test_training_flop_formula_matches_torch_flop_counter():
    """Forward + backward of the real model (ALiBi, GLU), counted by torch: exact for equal-length rows.

    The math attention backend: torch's counter misses the CPU fused kernel when it gets an additive bias (ALiBi);
    the math backend computes the same products as bmm, which it counts. ``packed=True`` (one window per row
    here) takes the dense-bias attention, whose products are exactly the model's: the one-window path widens
    each head by 8 key-padding channels, kernel work that the model's FLOPs (and MFU) do not count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config = DnaBert2Config(vocab_size=69, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=96)
    model = DnaBert2ForMaskedLM(config)
    batch, length = 2, 64
    input_ids = torch.randint(5, 69, (batch, length))
    input_ids[:, 0], input_ids[:, -1] = config.cls_token_id, 2  # [CLS] ... [SEP]
    masked = torch.zeros(batch, length, dtype=torch.bool)
    masked[:, 1:32] = True  # 31 of the 62 inner tokens: mask rate 0.5
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(input_ids, masked_positions=masked, packed=True).sum().backward()
    est = estimate(config, None, length, global_batch_size=batch, max_steps=1, micro_batch_size=batch, devices=1,
                   num_nodes=1, mask_rate=0.5)
    assert est.train_flops_per_sequence == pytest.approx(counter.get_total_flops() / batch, rel=1e-6)


def test_estimate_from_config_dispatches_on_the_model_family(capsys):
    cfg = OmegaConf.create({
        "model": {**preset("base").to_dict(), "family": "dnabert2", "compile": False, "init_from": None},
        "global_batch_size": 4096, "max_steps": 500_000, "estimate_gpu": "rtx 2080 ti",
        "data": {"micro_batch_size": 64, "max_tokens": 128}, "masking": {"rate": 0.15},
    })
    text = estimate_from_config(cfg, devices=8, num_nodes=1)
    assert "117,074,176" in text and "12.3 days" in text  # the authors report about 14 days on 8 RTX 2080 Ti
    cfg.model.family = "gpt"
    with pytest.raises(DnabertError, match="model.family='gpt'"):
        estimate_from_config(cfg, devices=8, num_nodes=1)
    assert main(["--family", "dnabert2", "--gpu", "h100", "--mfu", "0.5"]) == 0
    assert "117,074,176" in capsys.readouterr().out
