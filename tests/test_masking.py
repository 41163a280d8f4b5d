"""dnabert.data.masking: exact whole-k-mer rate, k-mer-run structure, packed windows, 80/10/10 replacement, schedule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from dnabert.data.masking import (
    IGNORE_INDEX,
    MaskSchedule,
    centre_rate_for,
    mask_batch,
    nucleotide_slots,
    original_mask_positions,
    whole_kmer_mask_positions,
)
from dnabert.data.tokenizers.kmer import SUPPORTED_K, vocab_size
from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID
from dnabert.errors import DnabertError

RATES = (0.15, 0.20)


def packed_batch(rng: np.random.Generator, rows: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """Rows of windows `[CLS] n k-mer ids [SEP]` (n per entry) one after another, [PAD] to a multiple of 8."""
    row_ids = []
    for window_lengths in rows:
        parts = [
            [CLS_ID, *rng.integers(NUM_SPECIAL_TOKENS, vocab_size(k), size=n).tolist(), SEP_ID] for n in window_lengths
        ]
        row_ids.append([token for part in parts for token in part])
    width = -(-max(map(len, row_ids)) // 8) * 8
    return torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids in row_ids], dtype=torch.long)


def single_window_batch(rng: np.random.Generator, n_rows: int, min_kmers: int, max_kmers: int, k: int) -> torch.Tensor:
    """`[CLS] k-mer ids [SEP] [PAD]...` rows of min..max k-mers, built with numpy (tests use up to 50,000 rows)."""
    lengths = rng.integers(min_kmers, max_kmers + 1, size=n_rows)
    width = -(-(max_kmers + 2) // 8) * 8
    ids = rng.integers(NUM_SPECIAL_TOKENS, vocab_size(k), size=(n_rows, width))
    position = np.arange(width)
    ids[:, 0] = CLS_ID
    ids[position == lengths[:, None] + 1] = SEP_ID
    ids[position > lengths[:, None] + 1] = PAD_ID
    return torch.from_numpy(ids)


def equal_windows_batch(rng: np.random.Generator, n_rows: int, window_lengths: Sequence[int], k: int) -> torch.Tensor:
    """Packed rows with the same windows (`[CLS] n k-mers [SEP]` per entry) in every row, built with numpy."""
    width = sum(n + 2 for n in window_lengths)
    ids = rng.integers(NUM_SPECIAL_TOKENS, vocab_size(k), size=(n_rows, width))
    start = 0
    for n in window_lengths:
        ids[:, start], ids[:, start + n + 1] = CLS_ID, SEP_ID
        start += n + 2
    return torch.from_numpy(ids)


def window_token_positions(row: Sequence[int]) -> list[list[int]]:
    """Positions of the k-mer tokens of each window of a row, found by walking [CLS] ... [SEP] in plain Python."""
    windows: list[list[int]] = []
    for position, token in enumerate(row):
        if token == CLS_ID:
            windows.append([])
        elif token >= NUM_SPECIAL_TOKENS:
            windows[-1].append(position)
    return windows


def is_union_of_kmer_runs(masked: Sequence[bool], k: int) -> bool:
    """Whether masked tokens of one window are exactly the k-mers containing some set of hidden nucleotides.

    Token t holds nucleotides t..t+k-1. The largest candidate hidden set is every nucleotide whose k-mers are all
    masked; the pattern is valid iff that set's k-mers are exactly the masked ones (runs of k clipped at edges).
    """
    n = len(masked)
    hidden = [all(masked[t] for t in range(max(0, j - k + 1), min(n - 1, j) + 1)) for j in range(n + k - 1)]
    covered = [any(hidden[t : t + k]) for t in range(n)]
    return covered == list(masked)


def real_tokens(input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids >= NUM_SPECIAL_TOKENS


# ----------------------------------------------------------------------------------------------- schedule


def test_schedule_switches_exactly_at_the_boundary() -> None:
    schedule = MaskSchedule(rate=0.15, final_rate=0.20, switch_step=100_000)
    assert schedule.rate_at(0) == 0.15
    assert schedule.rate_at(99_999) == 0.15
    assert schedule.rate_at(100_000) == 0.20
    assert schedule.rate_at(119_999) == 0.20


def test_schedule_without_switch_step_never_switches() -> None:
    schedule = MaskSchedule()
    assert (schedule.rate, schedule.final_rate, schedule.switch_step) == (0.15, 0.20, None)
    assert schedule.rate_at(10**9) == 0.15


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, "0.15", None, True])
def test_schedule_rejects_bad_rates_naming_the_setting(bad: object) -> None:
    with pytest.raises(DnabertError, match=r"masking\.rate="):
        MaskSchedule(rate=bad)
    with pytest.raises(DnabertError, match=r"masking\.final_rate="):
        MaskSchedule(final_rate=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "100"])
def test_schedule_rejects_bad_switch_step(bad: object) -> None:
    with pytest.raises(DnabertError, match=r"masking\.switch_step"):
        MaskSchedule(switch_step=bad)


def test_centre_rates_match_the_recipe_table() -> None:
    # The centre rates that mask 15% / 20% of tokens for k = 3..6
    assert [round(centre_rate_for(0.15, k), 4) for k in SUPPORTED_K] == [0.0527, 0.0398, 0.0320, 0.0267]
    assert [round(centre_rate_for(0.20, k), 4) for k in SUPPORTED_K] == [0.0717, 0.0543, 0.0436, 0.0365]
    with pytest.raises(DnabertError, match=r"masking\.rate"):
        centre_rate_for(1.0, 6)


# ----------------------------------------------------------------------------------------- exact rate


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("k", SUPPORTED_K)
def test_whole_kmer_rate_full_length(k: int, rate: float) -> None:
    input_ids = single_window_batch(np.random.default_rng(k), 2000, 510, 510, k)
    masked = whole_kmer_mask_positions(input_ids, k, rate, torch.Generator().manual_seed(k))
    fraction = masked[real_tokens(input_ids)].double().mean().item()
    assert fraction == pytest.approx(rate, abs=0.005)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("k", SUPPORTED_K)
def test_whole_kmer_rate_short_padded_sequences_edges_included(k: int, rate: float) -> None:
    rng = np.random.default_rng(10 + k)
    input_ids = single_window_batch(rng, 50_000, 3, 20, k)
    masked = whole_kmer_mask_positions(input_ids, k, rate, torch.Generator().manual_seed(10 + k))
    assert masked[real_tokens(input_ids)].double().mean().item() == pytest.approx(rate, abs=0.005)
    # the first and the last k-mer of a window have the full rate too (binomial sd about 0.0017 here)
    first = masked[:, 1].double().mean().item()
    last_position = (input_ids == SEP_ID).long().argmax(dim=1) - 1
    last = masked.gather(1, last_position[:, None]).double().mean().item()
    assert first == pytest.approx(rate, abs=0.008)
    assert last == pytest.approx(rate, abs=0.008)


# ---------------------------------------------------------------------------------- structure of masks


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_whole_kmer_mask_equals_reference_from_hidden_nucleotides(k: int) -> None:
    """Reproduce the documented draw (B, T + (k-1)*ceil(T/3) + k), then mask in plain Python: a token is masked
    iff one of its k nucleotide slots is hidden, where slot(t) = t + (k-1) * [CLS] count up to t; so every hidden
    nucleotide masks every k-mer of its window that contains it."""
    rng = np.random.default_rng(20 + k)
    rows = [[int(n) for n in rng.integers(1, 15, size=rng.integers(1, 4))] for _ in range(200)]
    input_ids = packed_batch(rng, rows, k)
    rate = 0.2
    masked = whole_kmer_mask_positions(input_ids, k, rate, torch.Generator().manual_seed(5))
    n_rows, width = input_ids.shape
    slots = width + (k - 1) * -(-width // 3) + k
    hidden = torch.rand((n_rows, slots), generator=torch.Generator().manual_seed(5)) < centre_rate_for(rate, k)
    for row, row_hidden, row_masked in zip(input_ids.tolist(), hidden.tolist(), masked.tolist(), strict=True):
        expected, windows_seen = [], 0
        for position, token in enumerate(row):
            windows_seen += token == CLS_ID
            first_slot = position + (k - 1) * windows_seen
            expected.append(token >= NUM_SPECIAL_TOKENS and any(row_hidden[first_slot : first_slot + k]))
        assert row_masked == expected


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_rows_packed_with_the_shortest_windows_stay_inside_the_draw(k: int) -> None:
    """The draw is sized for the worst case, a row of [CLS] k-mer [SEP] windows: the last slot must exist."""
    width = 3 * 40
    input_ids = torch.tensor([CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID] * 40).repeat(64, 1)
    assert input_ids.shape[1] == width
    masked = whole_kmer_mask_positions(input_ids, k, 0.5, torch.Generator().manual_seed(1))
    assert masked[:, 1::3].float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert not masked[:, 0::3].any() and not masked[:, 2::3].any()


@pytest.mark.parametrize("mode", ["whole_kmer", "original"])
@pytest.mark.parametrize("k", SUPPORTED_K)
def test_masked_tokens_are_unions_of_kmer_runs_within_each_window(k: int, mode: str) -> None:
    rng = np.random.default_rng(30 + k)
    rows = [[int(n) for n in rng.integers(1, 25, size=rng.integers(1, 4))] for _ in range(600)]
    input_ids = packed_batch(rng, rows, k)
    rate = 0.25 if mode == "whole_kmer" else 0.08
    masked_ids, labels = mask_batch(input_ids, k, rate, torch.Generator().manual_seed(k), mode=mode)
    masked = (labels != IGNORE_INDEX).tolist()
    checked_windows = 0
    for row, row_masked in zip(input_ids.tolist(), masked, strict=True):
        masked_in_windows = 0
        for positions in window_token_positions(row):
            pattern = [row_masked[p] for p in positions]
            assert is_union_of_kmer_runs(pattern, k), (row, row_masked)
            masked_in_windows += sum(pattern)
            checked_windows += any(pattern) and not all(pattern)
        assert masked_in_windows == sum(row_masked)  # nothing outside the windows' k-mers
    assert checked_windows > 200


def test_union_of_kmer_runs_reference_rejects_lone_interior_tokens() -> None:
    """The reference itself must tell runs from token-level masking, or the test above proves nothing."""
    assert is_union_of_kmer_runs([False, True, True, True, False, False], 3)
    assert is_union_of_kmer_runs([True, False, False, False, True, True], 3)  # runs clipped at both edges
    assert not is_union_of_kmer_runs([False, True, False, False, False, False], 3)
    assert not is_union_of_kmer_runs([False, True, True, False, False, False], 3)


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_nucleotide_slots_of_packed_windows_never_overlap(k: int) -> None:
    rng = np.random.default_rng(40 + k)
    input_ids = packed_batch(rng, [[1, 7, 3], [12], [2, 2, 2, 2]], k)
    slots = nucleotide_slots(input_ids, k).tolist()
    for row, row_slots in zip(input_ids.tolist(), slots, strict=True):
        ranges = [(row_slots[p[0]], row_slots[p[-1]] + k) for p in window_token_positions(row)]
        for positions in window_token_positions(row):
            # neighbours inside a window share k-1 nucleotides
            assert [row_slots[p] - row_slots[positions[0]] for p in positions] == list(range(len(positions)))
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            assert end <= start


@pytest.mark.parametrize("k", [4, 6])
def test_packed_windows_are_masked_independently(k: int) -> None:
    """Last k-mer of window 1 and first k-mer of window 2 are 3 tokens apart: without the slot shift they would
    share nucleotides (P(both) about 0.08 at k=6 instead of rate^2 = 0.0225)."""
    rate = 0.15
    rng = np.random.default_rng(50 + k)
    input_ids = equal_windows_batch(rng, 20_000, [10, 10], k)
    masked = whole_kmer_mask_positions(input_ids, k, rate, torch.Generator().manual_seed(k))
    last_of_first, first_of_second = masked[:, 10], masked[:, 14]
    assert input_ids[0, 11] == SEP_ID and input_ids[0, 12] == CLS_ID
    both = (last_of_first & first_of_second).double().mean().item()
    assert both == pytest.approx(rate**2, abs=0.006)


@pytest.mark.parametrize("mode", ["whole_kmer", "original"])
def test_specials_and_padding_never_masked(mode: str) -> None:
    k = 3
    rng = np.random.default_rng(60)
    input_ids = packed_batch(rng, [[int(n) for n in rng.integers(1, 9, size=3)] for _ in range(500)], k)
    input_ids[:, -1] = MASK_ID  # even a stray [MASK]/[UNK] in the input stays as it is
    input_ids[:, -2] = 1
    masked_ids, labels = mask_batch(
        input_ids, k, 0.9 if mode == "whole_kmer" else 0.5, torch.Generator().manual_seed(1), mode
    )
    special = ~real_tokens(input_ids)
    assert torch.equal(masked_ids[special], input_ids[special])
    assert (labels[special] == IGNORE_INDEX).all()
    assert (labels[real_tokens(input_ids)] != IGNORE_INDEX).float().mean() > 0.5


# ------------------------------------------------------------------------------------ replacement


@pytest.mark.parametrize("k", [3, 6])
def test_labels_and_80_10_10_replacement(k: int) -> None:
    rng = np.random.default_rng(70 + k)
    input_ids = single_window_batch(rng, 1000, 200, 510, k)
    original = input_ids.clone()
    masked_ids, labels = mask_batch(input_ids, k, 0.15, torch.Generator().manual_seed(k))
    assert torch.equal(input_ids, original)  # not modified in place
    assert masked_ids.dtype == labels.dtype == torch.long
    is_masked = labels != IGNORE_INDEX
    assert torch.equal(labels[is_masked], input_ids[is_masked])
    assert torch.equal(masked_ids[~is_masked], input_ids[~is_masked])
    new, old = masked_ids[is_masked], input_ids[is_masked]
    assert new.numel() > 50_000
    to_mask_token = (new == MASK_ID).double().mean().item()
    unchanged = (new == old).double().mean().item()
    random = new[(new != MASK_ID) & (new != old)]
    assert to_mask_token == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1, abs=0.01)
    assert random.numel() / new.numel() == pytest.approx(0.1, abs=0.01)
    assert random.min() >= NUM_SPECIAL_TOKENS and random.max() < vocab_size(k)


def test_random_replacement_is_uniform_over_the_other_kmers() -> None:
    """The default mode (the model card): never a special token, never the original one."""
    k = 3
    input_ids = torch.full((4000, 64), NUM_SPECIAL_TOKENS + 20, dtype=torch.long)
    masked_ids, labels = mask_batch(
        input_ids, k, 0.5, torch.Generator().manual_seed(0), mask_token_fraction=0.0, random_token_fraction=1.0
    )
    replaced = masked_ids[labels != IGNORE_INDEX]
    counts = torch.bincount(replaced, minlength=vocab_size(k))
    assert counts[:NUM_SPECIAL_TOKENS].sum() == 0 and counts[NUM_SPECIAL_TOKENS + 20] == 0
    others = counts[NUM_SPECIAL_TOKENS:][torch.arange(4**k) != 20].double()
    expected = replaced.numel() / (4**k - 1)
    assert (others - expected).abs().max() < 6 * expected**0.5  # every other k-mer, equally often


def test_same_seed_same_output_other_seed_other_output() -> None:
    input_ids = single_window_batch(np.random.default_rng(80), 50, 30, 100, 6)
    first = mask_batch(input_ids, 6, 0.15, torch.Generator().manual_seed(123))
    again = mask_batch(input_ids, 6, 0.15, torch.Generator().manual_seed(123))
    other = mask_batch(input_ids, 6, 0.15, torch.Generator().manual_seed(124))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


# ------------------------------------------------------------------------------------- original mode


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_original_mode_interior_rate_follows_centre_rate(k: int) -> None:
    centre_rate = centre_rate_for(0.15, k)
    input_ids = single_window_batch(np.random.default_rng(90 + k), 2000, 510, 510, k)
    masked = original_mask_positions(input_ids, k, centre_rate, torch.Generator().manual_seed(k))
    interior = masked[:, 1 + k : 511 - k].double().mean().item()
    assert interior == pytest.approx(1 - (1 - centre_rate) ** k, abs=0.005)


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_original_mode_edges_follow_the_original_offsets_in_each_packed_window(k: int) -> None:
    """Offsets -(k-1)//2 .. k-1-(k-1)//2: the first k-mer of a window is reached by (k-1)//2 + 1 centres, the
    last one by k - (k-1)//2 (e.g. k=6: 3 and 4), and never by centres of the neighbouring window."""
    centre_rate = 0.05
    input_ids = equal_windows_batch(np.random.default_rng(100 + k), 50_000, [16, 16], k)
    masked = original_mask_positions(input_ids, k, centre_rate, torch.Generator().manual_seed(k)).double()
    expected_first = 1 - (1 - centre_rate) ** ((k - 1) // 2 + 1)
    expected_last = 1 - (1 - centre_rate) ** (k - (k - 1) // 2)
    for first, last in [(1, 16), (19, 34)]:
        assert masked[:, first].mean().item() == pytest.approx(expected_first, abs=0.008)
        assert masked[:, last].mean().item() == pytest.approx(expected_last, abs=0.008)


def test_original_mode_isolated_spans_have_length_k() -> None:
    k = 6
    input_ids = single_window_batch(np.random.default_rng(110), 3000, 60, 60, k)
    masked = original_mask_positions(input_ids, k, 0.003, torch.Generator().manual_seed(0))[:, 1:61].int()
    edges = torch.diff(torch.nn.functional.pad(masked, (1, 1)), dim=1)
    starts, ends = (edges == 1).nonzero(), (edges == -1).nonzero()
    interior = (starts[:, 1] > 0) & (ends[:, 1] < 60)
    run_lengths = (ends[:, 1] - starts[:, 1])[interior]
    assert run_lengths.numel() > 300
    assert run_lengths.min() >= k and torch.mode(run_lengths).values == k


ORIGINAL_OFFSETS = {3: [-1, 1], 4: [-1, 1, 2], 5: [-2, -1, 1, 2], 6: [-2, -1, 1, 2, 3]}


def original_code_masking(input_ids: torch.Tensor, k: int, mlm_probability: float, seed: int) -> tuple:
    """The original DNABERT pretraining script's masking, re-stated: the global generator seeded with `seed`;
    centres Bernoulli(mlm_probability) on every token but [CLS]/[SEP]/[PAD]; each centre also masks the tokens at
    its k's offsets that lie in [1, last real token]; then [MASK] where Bernoulli(0.8), else a random id where
    Bernoulli(0.5), uniform over all ids of the vocabulary (4^k + 5: special tokens and the original included)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inputs = input_ids.clone()
        not_maskable = (inputs == CLS_ID) | (inputs == SEP_ID) | (inputs == PAD_ID)
        probability = torch.full(inputs.shape, mlm_probability).masked_fill(not_maskable, 0.0)
        centres = torch.bernoulli(probability).bool()
        masked = centres.clone()
        for row in range(len(inputs)):
            last_real = int(probability[row].nonzero().max())
            for centre in centres[row].nonzero().flatten().tolist():
                for offset in ORIGINAL_OFFSETS[k]:
                    if 1 <= centre + offset <= last_real:
                        masked[row, centre + offset] = True
        labels = torch.where(masked, inputs, IGNORE_INDEX)
        to_mask_token = torch.bernoulli(torch.full(inputs.shape, 0.8)).bool() & masked
        inputs[to_mask_token] = MASK_ID
        to_random = torch.bernoulli(torch.full(inputs.shape, 0.5)).bool() & masked & ~to_mask_token
        random_ids = torch.randint(vocab_size(k), inputs.shape)
        inputs[to_random] = random_ids[to_random]
    return inputs, labels


@pytest.mark.parametrize("k", SUPPORTED_K)
def test_original_mode_equals_the_original_code_draw_for_draw(k: int) -> None:
    """Same seed, same draws in the same order: identical masks, labels and random ids (rows of 1..100 k-mers)."""
    input_ids = single_window_batch(np.random.default_rng(140 + k), 64, 1, 100, k)
    centre_rate = 0.05
    for seed in (0, 1, 2024):
        expected_ids, expected_labels = original_code_masking(input_ids, k, centre_rate, seed)
        masked_ids, labels = mask_batch(input_ids, k, centre_rate, torch.Generator().manual_seed(seed),
                                        mode="original")
        assert (labels != IGNORE_INDEX).sum() > 200
        assert torch.equal(labels, expected_labels)
        assert torch.equal(masked_ids, expected_ids)


def test_original_mode_random_ids_are_uniform_over_the_whole_vocabulary() -> None:
    """Every id comes up as the "random" token equally often: the five special tokens and the original one too."""
    k, original_id = 3, NUM_SPECIAL_TOKENS + 20
    input_ids = torch.full((4000, 64), original_id, dtype=torch.long)
    masked_ids, labels = mask_batch(input_ids, k, 0.5, torch.Generator().manual_seed(0), mode="original",
                                    mask_token_fraction=0.0, random_token_fraction=1.0)
    replaced = masked_ids[labels != IGNORE_INDEX]
    counts = torch.bincount(replaced, minlength=vocab_size(k)).double()
    expected = replaced.numel() / vocab_size(k)
    assert replaced.numel() > 200_000
    assert (counts - expected).abs().max() < 6 * expected**0.5
    assert counts[:NUM_SPECIAL_TOKENS].min() > 0 and counts[original_id] > 0


# ------------------------------------------------------------------------------------------- errors


def test_bad_settings_raise_dnabert_errors() -> None:
    input_ids = single_window_batch(np.random.default_rng(120), 4, 5, 10, 3)
    with pytest.raises(DnabertError, match=r"masking\.mode"):
        mask_batch(input_ids, 3, 0.15, None, mode="span")
    with pytest.raises(DnabertError, match=r"masking\.rate"):
        mask_batch(input_ids, 3, 0.0, None)
    with pytest.raises(DnabertError, match=r"masking\.rate"):
        mask_batch(input_ids, 3, 1.0, None, mode="original")
    with pytest.raises(DnabertError, match="must not exceed 1"):
        mask_batch(input_ids, 3, 0.15, None, mask_token_fraction=0.9, random_token_fraction=0.2)
    with pytest.raises(DnabertError, match="not supported"):
        mask_batch(input_ids, 7, 0.15, None)
    with pytest.raises(ValueError, match="integer tensor"):
        mask_batch(input_ids.float(), 3, 0.15, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mask_batch_on_cuda() -> None:
    k = 6
    input_ids = single_window_batch(np.random.default_rng(130), 2000, 100, 510, k).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    masked_ids, labels = mask_batch(input_ids, k, 0.15, generator)
    assert masked_ids.device == labels.device == input_ids.device
    real = real_tokens(input_ids)
    assert (labels != IGNORE_INDEX)[real].double().mean().item() == pytest.approx(0.15, abs=0.005)
    assert (labels[~real] == IGNORE_INDEX).all()
    again = mask_batch(input_ids, k, 0.15, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(again[0], masked_ids)
    with pytest.raises(ValueError, match="generator"):
        mask_batch(input_ids, k, 0.15, torch.Generator().manual_seed(0))
    original = [mask_batch(input_ids, k, centre_rate_for(0.15, k), torch.Generator(device="cuda").manual_seed(1),
                           mode="original") for _ in range(2)]
    assert torch.equal(original[0][0], original[1][0]) and (original[0][1][~real] == IGNORE_INDEX).all()
    assert (original[0][1] != IGNORE_INDEX)[real].double().mean().item() == pytest.approx(0.15, abs=0.01)
