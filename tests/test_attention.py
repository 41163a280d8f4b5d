"""Attention probabilities (ModelFamily.attention_probabilities) and `python -m dnabert.tools.attention`.

The eager pass must be the model's own forward: hidden states equal to the SDPA path's (for DNABERT-2 in both of
its SDPA forms: the shared ALiBi bias with key padding as a channel, and the dense per-row bias of packed rows),
probabilities summing to 1 with zero weight on padding keys. The nucleotide projection is checked against a
brute-force average over covering token pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.models import build_model, get_family
from dnabert.models.components import recording_attention
from dnabert.run.attention import covering_matrix
from dnabert.tools import attention
from tests.test_embed import checkpoint_of

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
CONFIGS = {
    "dnabert": dict(vocab_size=69, max_position_embeddings=32, attention_probs_dropout_prob=0.0, **TINY),
    "dnabert2": dict(vocab_size=69, alibi_starting_size=32, **TINY),
}


def rows_with_padding() -> torch.Tensor:
    """Two one-window rows, the second shorter (padding keys)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 69, (2, 12), generator=generator)
    ids[:, 0] = CLS_ID
    ids[0, 11], ids[1, 7] = SEP_ID, SEP_ID
    ids[1, 8:] = PAD_ID
    return ids


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("packed", [False, True])
def test_probabilities_come_from_the_models_own_forward(family: str, packed: bool) -> None:
    torch.manual_seed(0)
    model = build_model(family, CONFIGS[family]).eval()
    ids = rows_with_padding()
    if packed:  # two windows in the first row: DNABERT-2 takes the dense per-row ALiBi bias
        ids[0, 6] = CLS_ID
    with torch.no_grad():
        expected = model.encode(ids, packed=packed)
        with recording_attention(model) as recorded:
            hidden = model.encode(ids, packed=packed)
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)  # the eager pass is the same computation
    assert len(recorded) == TINY["num_hidden_layers"]
    real = ids != PAD_ID
    for probabilities in recorded:
        assert probabilities.shape == (2, TINY["num_attention_heads"], 12, 12)
        sums = probabilities.sum(dim=-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert probabilities[1][:, real[1]][..., ~real[1]].abs().max() == 0  # real queries give padding nothing
        if packed:  # nothing crosses from the first window to the second
            assert probabilities[0, :, :6, 6:].abs().max() == 0 and probabilities[0, :, 6:, :6].abs().max() == 0
    for module in model.modules():  # recording ends with the context
        assert getattr(module, "recorded", None) is None


def test_dnabert2_probabilities_hold_the_alibi_bias() -> None:
    """Identical tokens everywhere make every query-key score equal, so the probabilities are the softmax of ALiBi
    alone: head h weighs key j against the query i by exp(-slope_h |i - j|)."""
    from dnabert.models.dnabert2.model import alibi_slopes

    torch.manual_seed(0)
    model = build_model("dnabert2", CONFIGS["dnabert2"]).eval()
    ids = torch.full((1, 10), 7)
    first = get_family("dnabert2").attention_probabilities(model, ids)[0][0]
    distance = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs()
    slopes = torch.tensor(alibi_slopes(TINY["num_attention_heads"]))
    expected = torch.softmax(-slopes[:, None, None] * distance, dim=-1)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-4)


def test_nucleotide_projection_is_the_mean_over_covering_token_pairs() -> None:
    generator = np.random.default_rng(0)
    for starts, ends, length in ((np.arange(6), np.arange(6) + 3, 8),  # 3-mers of 8 bases
                                 (np.array([0, 2, 3, 7]), np.array([2, 3, 7, 9]), 9)):  # BPE tokens of 2, 1, 4, 2 bases
        tokens = generator.random((len(starts), len(starts)))
        projection = covering_matrix(starts, ends, length)
        projected = projection @ tokens @ projection.T
        for a in range(length):
            for b in range(length):
                pairs = [tokens[i, j] for i in range(len(starts)) for j in range(len(starts))
                         if starts[i] <= a < ends[i] and starts[j] <= b < ends[j]]
                assert projected[a, b] == pytest.approx(np.mean(pairs))


def test_attention_command_writes_arrays_and_heat_maps(tmp_path: Path) -> None:
    run = checkpoint_of(tmp_path / "run", "dnabert", dict(CONFIGS["dnabert"], vocab_size=69), k=3)
    sequence = "ACGTTGCAAGGCTTACGATC"
    assert attention.main([str(run), sequence, str(tmp_path / "out"), "--layers", "all", "--device", "cpu"]) == 0
    saved = np.load(tmp_path / "out" / "sequence.npz")
    assert saved["layers"].tolist() == [1, 2] and str(saved["sequence"]) == sequence
    tokens, nucleotides = saved["token_attention"], saved["nucleotide_attention"]
    assert tokens.shape == (2, 4, 20, 20) and nucleotides.shape == (2, 4, 20, 20)  # [CLS] 18 3-mers [SEP]
    np.testing.assert_allclose(tokens.sum(axis=-1), 1, atol=1e-5)
    projection = covering_matrix(saved["token_start"], saved["token_end"], len(sequence))
    np.testing.assert_allclose(nucleotides, projection @ tokens[..., 1:-1, 1:-1] @ projection.T, atol=1e-6)
    for layer in (1, 2):
        assert (tmp_path / "out" / f"sequence_layer{layer}.png").stat().st_size > 10_000
        assert (tmp_path / "out" / f"sequence_layer{layer}_heads.png").stat().st_size > 10_000


def test_a_family_without_attention_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = checkpoint_of(tmp_path / "run", "tests.third_family:FAMILY", dict(vocab_size=69, hidden_size=16), k=3)
    assert attention.main([str(run), "ACGTACGTAC", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "has no attention probabilities" in capsys.readouterr().err
    with pytest.raises(DnabertError, match="1..2"):
        from dnabert.run.attention import parse_layers

        parse_layers("3", 2)


def test_a_sequence_longer_than_one_window_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = checkpoint_of(tmp_path / "run", "dnabert", CONFIGS["dnabert"], k=3)
    assert attention.main([str(run), "ACGT" * 10, str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "more than one window of 30" in capsys.readouterr().err
