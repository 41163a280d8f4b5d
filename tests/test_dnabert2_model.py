"""DnaBert2ForMaskedLM: logits parity with MultiMolecule, the published size, and every lever against its off form.

Tiny shapes throughout (CPU). Special ids follow the published DNABERT-2 tokenizer, [UNK]=0 [CLS]=1 [SEP]=2
[PAD]=3 [MASK]=4, set in the config (the defaults are this project's k-mer ids, [PAD]=0 [CLS]=2).
"""

from __future__ import annotations

import pytest
import torch

from dnabert.data.packing import RowPlan, place, plan_rows
from dnabert.errors import DnabertError
from dnabert.models.components import IGNORE_INDEX, count_parameters
from dnabert.models.dnabert2 import model as model_module
from dnabert.models.dnabert2.model import DnaBert2Config, DnaBert2ForMaskedLM, alibi_slopes, preset
from tests.model_checks import assert_same_loss_and_grads, check_inductor_equals_eager, loss_and_grads

CLS, SEP, PAD, MASK = 1, 2, 3, 4
VOCAB = 96
# The published special ids, not the defaults (this project's k-mer ids): nothing may assume the defaults.
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            pad_token_id=PAD, cls_token_id=CLS)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(seed: int = 0, **overrides) -> DnaBert2ForMaskedLM:
    torch.manual_seed(seed)
    return DnaBert2ForMaskedLM(DnaBert2Config(**{**TINY, **NO_DROPOUT, **overrides}))


def batch_of(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Rows [CLS] random BPE ids [SEP] then [PAD], width a multiple of 8 (as the collator pads)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(lengths), -(-max(lengths) // 8) * 8), PAD)
    for row, length in enumerate(lengths):
        rows[row, 0], rows[row, length - 1] = CLS, SEP
        rows[row, 1 : length - 1] = torch.randint(5, VOCAB, (length - 2,), generator=generator)
    return rows


def masked_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """30% of the non-special tokens replaced by [MASK], labels -100 elsewhere."""
    input_ids = batch_of(lengths, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    masked = (torch.rand(input_ids.shape, generator=generator) < 0.3) & (input_ids > MASK)
    return torch.where(masked, MASK, input_ids), torch.where(masked, input_ids, IGNORE_INDEX)


def pack(input_ids: torch.Tensor) -> tuple[torch.Tensor, RowPlan]:
    """Windows packed into rows of at most 32 tokens, with DNABERT-2's [PAD] id."""
    plan = plan_rows((input_ids != PAD).sum(dim=1).numpy(), row_tokens=32)
    return place(input_ids, plan, PAD), plan


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_equal_multimolecule_for_the_original_weights(attn_implementation):
    """Our state dict carries the original checkpoint's key names: MultiMolecule's own converter for those names
    turns it into its model, whose logits must equal ours (padding included, hidden dropout in the config)."""
    multimolecule = pytest.importorskip("multimolecule")
    from multimolecule.models.dnabert2.convert_checkpoint import _convert_checkpoint

    model = tiny_model(hidden_dropout_prob=0.1).eval()
    reference_config = multimolecule.DnaBert2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        pad_token_id=PAD, attn_implementation=attn_implementation,
    )
    reference = multimolecule.DnaBert2ForMaskedLM(reference_config).eval()
    reference.load_state_dict(_convert_checkpoint(reference_config, model.state_dict()), strict=True)
    input_ids = batch_of([24, 9, 17, 3])
    real = input_ids != PAD
    with torch.no_grad():
        ours = model(input_ids)
        theirs = reference(input_ids, attention_mask=real.long()).logits
    assert ours.shape == (4, 24, VOCAB)
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)
    assert ours[real].std() > 0.1  # not a trivially constant output


def test_alibi_slopes_are_the_papers_geometric_sequence():
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    slopes_12 = alibi_slopes(12)  # DNABERT-2's head count: 8 slopes, then the odd ones of 16
    assert slopes_12[:8] == alibi_slopes(8) and slopes_12[8:] == alibi_slopes(16)[0::2][:4]
    multimolecule = pytest.importorskip("multimolecule")
    for heads in (4, 6, 12):
        assert alibi_slopes(heads) == pytest.approx(multimolecule.modules.ALiBi.get_slopes(heads), rel=1e-12)


def test_base_preset_has_the_published_parameter_count():
    """117.07 M (MultiMolecule card, DNABERT-2-117M) at vocabulary 4096; tiny is a CPU-sized model."""
    with torch.device("meta"):
        base = count_parameters(DnaBert2ForMaskedLM(preset("base", vocab_size=4096)))
        tiny = count_parameters(DnaBert2ForMaskedLM(preset("tiny", vocab_size=4096)))
    assert base == 117_074_176 and round(base / 1e6, 2) == 117.07
    assert 0.5e6 < tiny < 1.5e6


def test_bad_configs_are_refused_with_the_setting_named():
    with pytest.raises(DnabertError, match="num_attention_heads"):
        DnaBert2Config(**{**TINY, "num_attention_heads": 5})
    with pytest.raises(DnabertError, match="pad_token_id"):
        DnaBert2Config(**{**TINY, "pad_token_id": VOCAB})
    with pytest.raises(DnabertError, match="Unknown DNABERT-2 model config field"):
        DnaBert2Config.from_dict({**TINY, "max_position_embeddings": 512})
    with pytest.raises(DnabertError, match="preset"):
        preset("huge")
    assert DnaBert2Config.from_dict(DnaBert2Config(**TINY).to_dict()) == DnaBert2Config(**TINY)
    with pytest.raises(DnabertError, match="attention_probs_dropout_prob=0"):
        DnaBert2ForMaskedLM(DnaBert2Config(**TINY, attention_probs_dropout_prob=0.1), attention="flex")


def test_packed_rows_match_one_window_per_row():
    """Same windows packed several per row: same loss and gradients (ALiBi restarts per window, no leak)."""
    model = tiny_model()
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5])
    packed_ids, plan = pack(input_ids)
    packed_labels = place(labels, plan, IGNORE_INDEX)
    assert packed_ids.shape[0] < input_ids.shape[0]
    assert_same_loss_and_grads(loss_and_grads(model, input_ids, labels),
                               loss_and_grads(model, packed_ids, packed_labels, packed=True))
    with torch.no_grad():
        masked = packed_labels != IGNORE_INDEX
        leaky = model(packed_ids, masked_positions=masked, packed=False)
        separated = model(packed_ids, masked_positions=masked, packed=True)
    assert (leaky - separated).abs().max() > 1e-3


def test_masked_only_head_gives_the_full_heads_loss_and_gradients():
    model = tiny_model()
    input_ids, labels = masked_batch([24, 11, 17])
    assert_same_loss_and_grads(loss_and_grads(model, input_ids, labels, head_on_masked_only=False),
                               loss_and_grads(model, input_ids, labels, head_on_masked_only=True))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_equals_sdpa_on_packed_rows():
    """Forward only: FlexAttention has no backward on CPU (its gradients are torch's to test, on GPU)."""
    sdpa = tiny_model().eval()
    flex = DnaBert2ForMaskedLM(sdpa.config, attention="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5])
    packed_ids, plan = pack(input_ids)
    masked = place(labels, plan, IGNORE_INDEX) != IGNORE_INDEX
    with torch.no_grad():
        expected = sdpa(packed_ids, masked_positions=masked, packed=True)
        torch.testing.assert_close(flex(packed_ids, masked_positions=masked, packed=True), expected,
                                   atol=1e-5, rtol=1e-5)


def test_compiled_equals_eager_inductor():
    """A 1-layer model through inductor and FlexAttention's compiled kernel (tests/model_checks.py), with ALiBi
    restarting per window in the packed rows and as the flex score_mod."""
    eager = tiny_model(num_hidden_layers=1)
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5], seed=2)
    packed_ids, plan = pack(input_ids)
    check_inductor_equals_eager(eager, tiny_model(num_hidden_layers=1),
                                DnaBert2ForMaskedLM(eager.config, attention="flex"), model_module,
                                [masked_batch([24, 11, 17]), masked_batch([13, 16], seed=1)],
                                (packed_ids, place(labels, plan, IGNORE_INDEX)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_levers_together_match_float32_sdpa():
    """On the GPU: packed rows through compiled FlexAttention under bf16 autocast, forward and backward, against
    the float32 SDPA reference on the same rows (bf16 tolerances)."""
    reference = tiny_model().cuda()
    fast = DnaBert2ForMaskedLM(reference.config, attention="flex").cuda()
    fast.load_state_dict(reference.state_dict())
    fast.compile(dynamic=True)
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5])
    packed_ids, plan = pack(input_ids)
    packed_ids, packed_labels = packed_ids.cuda(), place(labels, plan, IGNORE_INDEX).cuda()
    expected = loss_and_grads(reference, packed_ids, packed_labels, packed=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(fast, packed_ids, packed_labels, packed=True)
    assert loss.item() == pytest.approx(expected[0].item(), rel=2e-2)
    for name, grad in expected[1].items():
        assert torch.isfinite(grads[name]).all()
        assert torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0) > 0.99, name


def test_bf16_autocast_stays_close_to_float32():
    """bf16 matmuls, float32 loss: the loss moves by bf16 rounding only, and every gradient stays finite."""
    model = tiny_model()
    input_ids, labels = masked_batch([30, 7, 18, 12, 30, 5])
    packed_ids, plan = pack(input_ids)
    packed_labels = place(labels, plan, IGNORE_INDEX)
    full_loss, _ = loss_and_grads(model, packed_ids, packed_labels, packed=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_loss, grads = loss_and_grads(model, packed_ids, packed_labels, packed=True)
    assert half_loss.dtype == torch.float32
    assert half_loss.item() == pytest.approx(full_loss.item(), rel=2e-2)
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    with torch.no_grad():  # bf16 weights without autocast (inference): the float32 ALiBi bias follows the dtype
        logits = model.to(torch.bfloat16)(packed_ids, packed=True)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert model.alibi_slopes.dtype == torch.float32  # not rounded to bf16 with the weights


def test_fully_padded_row_gives_finite_outputs_and_gradients():
    model = tiny_model()
    input_ids = torch.tensor([[CLS, 7, 8, SEP], [PAD] * 4])
    logits = model(input_ids)
    assert torch.isfinite(logits).all()
    logits[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
