"""Packing windows into rows: a valid deterministic layout, and the same per-window loss and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.masking import mask_batch
from dnabert.data.packing import pack_batch, pack_rows, padding_fraction, place, plan_rows
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import IGNORE_INDEX, DnaBertConfig, DnaBertForMaskedLM
from tests.conftest import DEMO_FASTA, windows_in_rows

K = 3
VOCAB = 4**K + 5
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def one_window_per_row(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """`[CLS] k-mers [SEP] [PAD]..` rows of the given token lengths, width rounded up to 8 as in collate."""
    generator = torch.Generator().manual_seed(seed)
    width = -(-max(lengths) // 8) * 8
    rows = torch.full((len(lengths), width), PAD_ID)
    for row, length in enumerate(lengths):
        rows[row, 0] = CLS_ID
        rows[row, 1 : length - 1] = torch.randint(5, VOCAB, (length - 2,), generator=generator)
        rows[row, length - 1] = SEP_ID
    return rows


def recipe_lengths(count: int, max_tokens: int, seed: int) -> list[int]:
    """Half full length, half uniformly shorter: the original DNABERT cut."""
    rng = np.random.default_rng(seed)
    short = rng.integers(3, max_tokens, count)
    return np.where(rng.random(count) < 0.5, max_tokens, short).tolist()


def test_first_fit_decreasing_layout():
    plan = plan_rows(np.array([3, 8, 5, 2, 8]), row_tokens=10, pad_to_multiple_of=1)
    # longest first (8, 8, 5, 3, 2), each into the first row with room
    assert plan.row.tolist() == [2, 0, 2, 0, 1]
    assert plan.offset.tolist() == [5, 0, 0, 8, 0]
    assert (plan.num_rows, plan.width) == (3, 10)
    again = plan_rows(np.array([3, 8, 5, 2, 8]), row_tokens=10, pad_to_multiple_of=1)
    assert again.row.tolist() == plan.row.tolist() and again.offset.tolist() == plan.offset.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_packed_rows_hold_every_window_once_in_capacity(seed):
    lengths = recipe_lengths(40, 64, seed)
    input_ids = one_window_per_row(lengths, seed)
    packed, plan = pack_rows(input_ids, row_tokens=64)
    assert packed.shape == (plan.num_rows, 64) and plan.num_rows < len(lengths)
    for window, length in enumerate(lengths):
        row, start = plan.row[window], plan.offset[window]
        assert torch.equal(packed[row, start : start + length], input_ids[window, :length])
    assert int((packed != PAD_ID).sum()) == sum(lengths)  # nothing else in the rows
    assert int((packed == CLS_ID).sum()) == len(lengths)
    # real tokens form a prefix of each row, so masking and the model find windows from [CLS] alone
    real = (packed != PAD_ID).int()
    assert torch.all(real[:, 1:] <= real[:, :-1])


def test_packing_cuts_padding_at_the_recipe_length_distribution():
    input_ids = one_window_per_row(recipe_lengths(128, 512, seed=1))
    packed, _ = pack_rows(input_ids, row_tokens=512)
    assert padding_fraction(input_ids) > 0.15
    assert padding_fraction(packed) < 0.06


def test_window_longer_than_a_row_is_a_clear_error():
    with pytest.raises(DnabertError, match="pack_row_tokens"):
        plan_rows(np.array([10, 70]), row_tokens=64)


def test_pack_batch_keeps_one_window_entry_per_window():
    input_ids = one_window_per_row([20, 9, 7])
    window = torch.arange(12).view(3, 4)
    batch = pack_batch({"input_ids": input_ids, "window": window}, row_tokens=24)
    assert batch["input_ids"].shape == (2, 24)  # 20 | 9 + 7, width 20 rounded up to 8
    assert torch.equal(batch["window"], window)


def loss_sum_and_grads(model: DnaBertForMaskedLM, input_ids: torch.Tensor, labels: torch.Tensor, packed: bool):
    """Summed masked-token loss (so per-window terms add up the same in both layouts) and its gradients."""
    model.zero_grad()
    masked = labels != IGNORE_INDEX
    logits = model(input_ids, masked_positions=masked, packed=packed)
    losses = torch.nn.functional.cross_entropy(logits.float(), labels[masked], reduction="none")
    losses.sum().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return losses.detach(), grads


def test_packed_rows_give_the_same_per_window_loss_and_gradients():
    torch.manual_seed(0)
    model = DnaBertForMaskedLM(DnaBertConfig(**TINY))  # training mode; dropout off for an exact comparison
    lengths = [30, 7, 18, 12, 30, 5]
    unpacked = one_window_per_row(lengths, seed=3)
    masked_ids, labels = mask_batch(unpacked, K, 0.3, torch.Generator().manual_seed(4))
    packed_ids, plan = pack_rows(masked_ids, row_tokens=32)
    packed_labels = place(labels, plan, IGNORE_INDEX)
    assert plan.num_rows < len(lengths)

    losses_a, grads_a = loss_sum_and_grads(model, masked_ids, labels, packed=False)
    losses_b, grads_b = loss_sum_and_grads(model, packed_ids, packed_labels, packed=True)
    # per-window losses: map every masked token of the packed rows back to its window and position
    window_of_a = torch.arange(len(lengths))[:, None].expand_as(labels)[labels != IGNORE_INDEX]
    row_window = place(torch.arange(len(lengths))[:, None].expand_as(labels).contiguous(), plan, -1)
    window_of_b = row_window[packed_labels != IGNORE_INDEX]
    for window in range(len(lengths)):
        torch.testing.assert_close(losses_b[window_of_b == window], losses_a[window_of_a == window],
                                   atol=1e-5, rtol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_datamodule_packs_the_same_windows_into_fewer_rows(tmp_path):
    settings = dict(genomes=[{"name": "demo", "fasta": str(DEMO_FASTA)}], k=6, micro_batch_size=24, num_workers=2,
                    max_tokens=128, pin_memory=False, cache_dir=tmp_path, batches_per_transfer=2)
    plain = GenomeDataModule(**settings).train_dataloader()
    packed = GenomeDataModule(**settings, pack_rows=True).train_dataloader()
    for _, one_per_row, several_per_row in zip(range(5), plain, packed, strict=False):
        assert torch.equal(several_per_row["window"], one_per_row["window"])  # one entry per window
        assert several_per_row["input_ids"].shape[0] < one_per_row["input_ids"].shape[0]
        assert several_per_row["input_ids"].shape[1] <= 128
        assert sorted(windows_in_rows(several_per_row["input_ids"])) == sorted(windows_in_rows(
            one_per_row["input_ids"]))


def test_pack_row_tokens_below_the_window_length_is_a_clear_error(tmp_path):
    with pytest.raises(DnabertError, match="pack_row_tokens"):
        GenomeDataModule([{"name": "demo", "fasta": str(DEMO_FASTA)}], max_tokens=128, pack_rows=True,
                         pack_row_tokens=100, cache_dir=tmp_path)
