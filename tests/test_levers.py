"""Every performance lever computes the same thing as its switched-off form (CPU, tiny model, fixed shapes).

torch.compile: inductor, as on a GPU, compiles a 1-layer model (dynamo tracing, AOTAutograd and code generation:
everything that can go wrong in our code) in every run of the suite.
"""

from __future__ import annotations

import pytest
import torch

from dnabert.data.masking import mask_batch
from dnabert.data.packing import pack_rows, place
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert import model as model_module
from dnabert.models.dnabert.model import IGNORE_INDEX, DnaBertConfig, DnaBertForMaskedLM, attention_bias
from dnabert.tasks.pretrain import MaskedLMModule, fuses_adamw
from tests.model_checks import assert_same_loss_and_grads, check_inductor_equals_eager, loss_and_grads

K = 3
VOCAB = 4**K + 5
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def batch_of(lengths: list[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(lengths), -(-max(lengths) // 8) * 8), PAD_ID)
    for row, length in enumerate(lengths):
        rows[row, 0], rows[row, length - 1] = CLS_ID, SEP_ID
        rows[row, 1 : length - 1] = torch.randint(5, VOCAB, (length - 2,), generator=generator)
    return rows


def masked_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_batch(batch_of(lengths, seed), K, 0.3, torch.Generator().manual_seed(seed + 1))


def test_key_padding_mask_equals_the_dense_mask():
    """One window per row: the broadcast (B,1,1,T) mask gives the dense mask's outputs at real tokens."""
    torch.manual_seed(0)
    model = DnaBertForMaskedLM(DnaBertConfig(**TINY, **NO_DROPOUT)).eval()
    input_ids = batch_of([20, 9, 14])
    key_mask = input_ids != PAD_ID
    assert attention_bias(key_mask, None).shape == (3, 1, 1, 24)
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids, torch.arange(24).expand_as(input_ids))
        broadcast = model.bert.encoder(hidden, attention_bias(key_mask, None))
        dense = attention_bias(key_mask, torch.zeros_like(input_ids))  # one window: the dense form
        reference = model.bert.encoder(hidden, dense)
    torch.testing.assert_close(broadcast[key_mask], reference[key_mask], atol=1e-5, rtol=0)


def test_masked_only_head_gives_the_full_heads_loss_and_gradients():
    torch.manual_seed(0)
    model = DnaBertForMaskedLM(DnaBertConfig(**TINY, **NO_DROPOUT))
    input_ids, labels = masked_batch([24, 11, 17])
    assert_same_loss_and_grads(
        loss_and_grads(model, input_ids, labels, head_on_masked_only=False),
        loss_and_grads(model, input_ids, labels, head_on_masked_only=True),
    )


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_equals_sdpa_on_packed_rows():
    """Forward only: FlexAttention has no backward on CPU (its gradients are torch's to test, on GPU)."""
    torch.manual_seed(0)
    config = DnaBertConfig(**TINY, **NO_DROPOUT)
    sdpa = DnaBertForMaskedLM(config).eval()
    flex = DnaBertForMaskedLM(config, attention="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5])
    packed_ids, plan = pack_rows(input_ids, row_tokens=32)
    masked = place(labels, plan, IGNORE_INDEX) != IGNORE_INDEX
    with torch.no_grad():
        expected = sdpa(packed_ids, masked_positions=masked, packed=True)
        torch.testing.assert_close(flex(packed_ids, masked_positions=masked, packed=True), expected,
                                   atol=1e-5, rtol=1e-5)
        leaky = sdpa(packed_ids, masked_positions=masked, packed=False)
    assert (leaky - expected).abs().max() > 1e-3  # the block mask really separates the windows


def test_flex_attention_refuses_attention_dropout():
    with pytest.raises(DnabertError, match="attention_probs_dropout_prob=0"):
        DnaBertForMaskedLM(DnaBertConfig(**TINY, attention_probs_dropout_prob=0.1), attention="flex")
    with pytest.raises(DnabertError, match="unknown"):
        DnaBertForMaskedLM(DnaBertConfig(**TINY), attention="flash")


def test_compiled_equals_eager_inductor():
    """A 1-layer model through inductor and FlexAttention's compiled kernel (tests/model_checks.py)."""
    config = DnaBertConfig(**{**TINY, "num_hidden_layers": 1}, **NO_DROPOUT)
    torch.manual_seed(0)
    eager = DnaBertForMaskedLM(config)
    compiled = DnaBertForMaskedLM(config)
    compiled.load_state_dict(eager.state_dict())
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5], seed=2)
    packed_ids, plan = pack_rows(input_ids, row_tokens=32)
    check_inductor_equals_eager(eager, compiled, DnaBertForMaskedLM(config, attention="flex"), model_module,
                                [masked_batch([24, 11, 17]), masked_batch([13, 16], seed=1)],
                                (packed_ids, place(labels, plan, IGNORE_INDEX)))


def test_fused_adamw_step_equals_the_loop_implementation():
    torch.manual_seed(0)
    models = [DnaBertForMaskedLM(DnaBertConfig(**TINY, **NO_DROPOUT)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    input_ids, labels = masked_batch([24, 11, 17])
    for model, fused in zip(models, (False, True), strict=True):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
                                      weight_decay=0.01, fused=fused, foreach=False if not fused else None)
        for _ in range(3):
            loss_and_grads(model, input_ids, labels)
            optimizer.step()
    for (name, first), second in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(second, first, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("device_type", "fused", "precision", "expected"), [
    ("cuda", True, "bf16-mixed", True), ("cuda", True, "32-true", True), ("cuda", False, "bf16-mixed", False),
    ("cuda", True, "16-mixed", False), ("cpu", True, "bf16-mixed", False),
])
def test_adamw_fuses_on_cuda_except_under_fp16(device_type, fused, precision, expected):
    assert fuses_adamw(device_type, {"fused": fused}, precision) is expected


def test_lightning_cannot_clip_a_fused_optimizer_under_fp16():
    """Why ``fuses_adamw`` says no under 16-mixed: the recipe clips at 1.0, and Lightning's gradient scaler refuses
    to clip for an optimizer that unscales inside its step (precision=auto picks 16-mixed on pre-bf16 GPUs)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        plugin.clip_gradients(torch.optim.AdamW([parameter], fused=True), clip_val=1.0)
    plugin.clip_gradients(torch.optim.AdamW([parameter]), clip_val=1.0)


def test_module_switches_reach_the_model():
    settings = dict(k=K, model_config={**TINY, **NO_DROPOUT}, masking={"rate": 0.15, "final_rate": 0.2},
                    optim={"lr": 1e-3})
    default = MaskedLMModule(**settings)
    assert (default.packed, default.head_on_masked_only, default.model.attention) == (False, True, "sdpa")
    levers = MaskedLMModule(**settings, packed=True, head_on_masked_only=False, attention="flex")
    assert (levers.packed, levers.head_on_masked_only, levers.model.attention) == (True, False, "flex")
    input_ids, labels = masked_batch([30, 7, 18, 12])
    packed_ids, plan = pack_rows(input_ids, row_tokens=32)
    levers.model.attention = "sdpa"  # same weights, CPU-friendly attention: the packed flag is what matters
    levers.model.load_state_dict(default.model.state_dict())
    unpacked_loss = default.masked_lm_outputs({"input_ids": input_ids, "labels": labels})["loss"]
    packed_loss = levers.masked_lm_outputs({"input_ids": packed_ids, "labels": place(labels, plan, IGNORE_INDEX)})
    torch.testing.assert_close(packed_loss["loss"], unpacked_loss, atol=1e-5, rtol=1e-5)


def test_benchmarks_run_on_cpu_and_print_their_tables(capsys):
    """Smoke runs of both benchmark scripts with a tiny model and short windows (their figures: BENCHMARKS.md)."""
    from benchmarks import data_pipeline, train_throughput

    data_pipeline.main(["--max-tokens", "64", "--micro-batch", "4", "--seconds", "0.2", "--workers"])
    train_throughput.main(["--device", "cpu", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--micro-batch",
                           "4", "--workers", "0", "--max-tokens", "64", "--runs", "baseline", "raw"])
    printed = capsys.readouterr().out
    assert "reference, Python BertTokenizer, 1 core" in printed and "ours, 1 core (in process)" in printed
    assert "(a) baseline" in printed and "(c) ours, raw torch loop" in printed
    assert "paper recipe (120k steps x 2000 windows) on 8 x CPU" in printed
