"""DnaBertForMaskedLM: parity with transformers' BertForMaskedLM, masked-only head, packed rows, presets."""

import pytest
import torch
import transformers

from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import (
    DnaBertConfig,
    DnaBertForMaskedLM,
    count_parameters,
    masked_lm_loss,
    packed_layout,
    preset,
)

VOCAB = 69  # k=3
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
)


def tiny_model(seed: int = 0) -> DnaBertForMaskedLM:
    torch.manual_seed(seed)
    return DnaBertForMaskedLM(DnaBertConfig(**TINY)).eval()


def window(length: int, generator: torch.Generator) -> torch.Tensor:
    """[CLS] + random k-mer ids + [SEP], `length` tokens in all."""
    kmers = torch.randint(5, VOCAB, (length - 2,), generator=generator)
    return torch.cat([torch.tensor([CLS_ID]), kmers, torch.tensor([SEP_ID])])


def padded_batch(windows: list[torch.Tensor], length: int) -> torch.Tensor:
    batch = torch.full((len(windows), length), PAD_ID, dtype=torch.long)
    for row, tokens in enumerate(windows):
        batch[row, : len(tokens)] = tokens
    return batch


@pytest.fixture
def windows() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [window(length, generator) for length in (24, 9, 15, 5)]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_equal_transformers_with_padding(windows, attn_implementation):
    model = tiny_model()
    reference = transformers.BertForMaskedLM._from_config(
        model.config.to_hf_config(), attn_implementation=attn_implementation
    ).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    input_ids = padded_batch(windows, 24)
    real = input_ids != PAD_ID
    with torch.no_grad():
        ours = model(input_ids)
        theirs = reference(input_ids=input_ids, attention_mask=real.long()).logits
    assert ours.shape == (4, 24, VOCAB)
    assert (ours - theirs)[real].abs().max() <= 1e-4
    assert ours.abs().max() > 0.1  # not a trivially zero model


def test_state_dict_keys_and_shapes_identical_both_ways():
    model = tiny_model()
    reference = transformers.BertForMaskedLM(model.config.to_hf_config())
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours == theirs
    assert "cls.predictions.decoder.bias" in ours and not any("pooler" in key for key in ours)
    reference.load_state_dict(model.state_dict(), strict=True)
    fresh = DnaBertForMaskedLM(model.config)
    fresh.load_state_dict(reference.state_dict(), strict=True)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in model.state_dict().items())


def test_config_round_trips_through_transformers():
    config = DnaBertConfig(**TINY, hidden_dropout_prob=0.05, layer_norm_eps=1e-6)
    assert DnaBertConfig.from_hf_config(config.to_hf_config()) == config
    assert DnaBertConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DnabertError, match="hidden_sise"):
        DnaBertConfig.from_dict({**TINY, "hidden_sise": 3})
    with pytest.raises(DnabertError, match="num_attention_heads"):
        DnaBertConfig(**{**TINY, "num_attention_heads": 5})


def test_decoder_tied_to_word_embeddings_and_bias_shared():
    model = tiny_model()
    predictions = model.cls.predictions
    assert predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert predictions.decoder.bias is predictions.bias
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7, 0] = 3.0
    assert predictions.decoder.weight[7, 0] == 3.0


def test_init_like_bert():
    torch.manual_seed(0)
    model = DnaBertForMaskedLM(preset("small", 4))
    query = model.bert.encoder.layer[0].attention.self.query
    assert abs(query.weight.std().item() - 0.02) < 0.002
    assert torch.all(query.bias == 0) and torch.all(model.cls.predictions.bias == 0)
    assert torch.all(model.bert.embeddings.word_embeddings.weight[PAD_ID] == 0)
    norm = model.bert.encoder.layer[0].output.LayerNorm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_masked_only_head_equals_full_head_at_masked_positions(windows):
    model = tiny_model()
    input_ids = padded_batch(windows, 24)
    masked = (torch.rand(input_ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3) & (input_ids > 4)
    with torch.no_grad():
        full = model(input_ids)
        only_masked = model(input_ids, masked_positions=masked)
        selected_after = model(input_ids, masked_positions=masked, head_on_masked_only=False)
    assert only_masked.shape == (int(masked.sum()), VOCAB)
    torch.testing.assert_close(only_masked, full[masked], atol=1e-5, rtol=0)
    torch.testing.assert_close(selected_after, full[masked], atol=1e-5, rtol=0)


def test_packed_layout_restarts_positions_at_each_cls():
    input_ids = torch.tensor([[CLS_ID, 9, 9, SEP_ID, CLS_ID, 9, SEP_ID, PAD_ID]])
    window_ids, position_ids = packed_layout(input_ids)
    assert window_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2]]
    assert position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]


def test_packed_rows_match_one_window_per_row(windows):
    """Same windows, packed two per row vs one per row: same logits, loss and gradients."""
    torch.manual_seed(0)
    # training mode for the gradients, dropout off for a deterministic comparison
    model = DnaBertForMaskedLM(DnaBertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    unpacked = padded_batch(windows, 24)
    packed = padded_batch([torch.cat(windows[:2]), torch.cat(windows[2:])], 40)
    labels_unpacked = torch.where(unpacked > 4, unpacked.roll(1, dims=1), -100)
    labels_unpacked[:, ::3] = -100
    # rebuild the labels of the packed rows from the per-window labels, window by window
    window_labels = [labels_unpacked[row, : len(tokens)] for row, tokens in enumerate(windows)]
    labels_packed = torch.full(packed.shape, -100)
    labels_packed[0, :33] = torch.cat(window_labels[:2])
    labels_packed[1, :20] = torch.cat(window_labels[2:])

    def loss_and_grads(input_ids, labels, packed_rows):
        model.zero_grad()
        masked = labels != -100
        logits = model(input_ids, masked_positions=masked, packed=packed_rows)
        loss = masked_lm_loss(logits, labels[masked])
        loss.backward()
        return logits.detach(), loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    logits_a, loss_a, grads_a = loss_and_grads(unpacked, labels_unpacked, False)
    logits_b, loss_b, grads_b = loss_and_grads(packed, labels_packed, True)
    # row-major order of masked positions is the same window order in both layouts
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4, msg=name)
    # without packing the second window would see the first one: a real difference
    with torch.no_grad():
        leaky = model(packed, masked_positions=labels_packed != -100, packed=False)
    assert (leaky - logits_a).abs().max() > 1e-3


def test_fully_padded_row_gives_finite_outputs_and_gradients():
    model = tiny_model()
    input_ids = torch.tensor([[CLS_ID, 7, 8, SEP_ID], [PAD_ID] * 4])
    logits = model(input_ids)
    assert torch.isfinite(logits).all()
    logits[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_masked_lm_loss_ignores_unmasked_labels():
    logits = torch.randn(2, 3, VOCAB)
    labels = torch.tensor([[-100, 5, -100], [7, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(masked_lm_loss(logits, labels), expected)


def test_micro_batch_without_masked_tokens_adds_nothing_instead_of_nan():
    """A NaN here would make the non-finite guard drop the whole optimiser step, and poison held-out sums."""
    logits = torch.randn(2, 3, VOCAB, requires_grad=True)
    loss = masked_lm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    empty = masked_lm_loss(torch.randn(0, VOCAB), torch.zeros(0, dtype=torch.long))  # masked-only head, none masked
    assert empty.item() == 0.0


def test_bert_base_parameter_count_matches_dnabert_model_card():
    """MultiMolecule's DNABERT card: 89.19M (k=6), 86.83M (k=5), 86.24M (k=4), with one more <null> row."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        counts = {k: count_parameters(DnaBertForMaskedLM(preset("bert_base", k))) for k in (4, 5, 6)}
        reference = transformers.BertForMaskedLM(preset("bert_base", 6).to_hf_config())
    assert counts[6] == 89_196_549
    assert 86e6 <= counts[4] < counts[5] < counts[6] < 89.3e6
    assert round(counts[5] / 1e6, 2) == 86.83 and round(counts[4] / 1e6, 2) == 86.24
    assert count_parameters(reference) == counts[6]


def test_presets_and_unknown_preset():
    assert preset("tiny", 3).num_hidden_layers == 2 and preset("tiny", 3).vocab_size == 69
    assert preset("small", 6).hidden_size == 256 and preset("small", 6).vocab_size == 4101
    with pytest.raises(DnabertError, match="preset"):
        preset("huge", 6)
