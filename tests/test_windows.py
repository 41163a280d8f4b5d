"""Windows: the original length rule's statistics, tiling, per-epoch redraw, shuffling, the position-addressable
stream, genome mixing by weight and reads against a plain-Python parse."""

from __future__ import annotations

import numpy as np
import pytest

from dnabert.data.tokenizers.kmer import INVALID_CODE, encode_nucleotides
from dnabert.data.windows import WindowRule, WindowStream, cut_intervals, epoch_windows, read_windows
from dnabert.errors import DnabertError
from tests.test_genome import open_genome, parse_fasta, random_contig, write_fasta

RULE = WindowRule(k=6)
M = RULE.max_nucleotides


def test_longest_window_fills_max_tokens():
    assert M == 515  # 509 + k: [CLS] + 510 six-mers + [SEP] = 512 tokens
    assert WindowRule(k=3, max_tokens=128).max_nucleotides == 128


def test_original_length_distribution():
    intervals = np.array([[0, 0, 3_000_000], [1, 0, 2_000_000]])
    _, _, lengths = cut_intervals(intervals, RULE, np.random.default_rng(0))
    full = np.mean(lengths == M)
    assert full == pytest.approx(0.5, abs=0.02)
    assert lengths.mean() / M == pytest.approx(0.75, abs=0.02)
    short = lengths[lengths < M]
    assert short.min() >= 6 and np.mean(short) == pytest.approx(M / 2, rel=0.05)  # uniform below M


def test_fixed_rule_gives_only_full_windows():
    intervals = np.array([[0, 0, 100_000], [0, 200_000, 200_300]])
    _, starts, lengths = cut_intervals(intervals, WindowRule(6, length_rule="fixed"), np.random.default_rng(0))
    assert set(lengths[starts < 100_000]) == {M}
    assert lengths[starts >= 200_000].tolist() == [300]  # an interval of at most M bp is one window
    assert np.sum(starts < 100_000) >= 100_000 // M - 1


@pytest.mark.parametrize("k", [3, 6])
def test_windows_tile_intervals_without_overlap(k):
    rule = WindowRule(k=k)
    longest = rule.max_nucleotides
    intervals = np.array([[0, 10, 50_000], [0, 50_100, 50_400], [1, 0, 30_000], [1, 30_001, 31_000]])
    contig, start, length = cut_intervals(intervals, rule, np.random.default_rng(5))
    for interval_contig, first, end in intervals:
        inside = (contig == interval_contig) & (start >= first) & (start < end)
        s, e = start[inside], start[inside] + length[inside]
        assert np.all(np.diff(s) > 0) and np.all(e <= end) and np.all(length[inside] >= k)
        gaps = s[1:] - e[:-1]
        assert np.all(gaps >= 0)
        # Interior gaps are dropped pieces shorter than k: none for k=3 (pieces are >= 5), 5-nt ones for k=6.
        assert np.all(gaps % 5 == 0) if k == 6 else np.all(gaps == 0)
        assert end - e[-1] < k  # only a sub-k remainder is left at the end
        phase = s[0] - first
        assert phase <= max(0, min(longest, end - first - longest))
    assert len(contig) == len(set(zip(contig.tolist(), start.tolist(), strict=True)))


def test_epochs_differ_and_repeat_exactly():
    intervals = np.array([[0, 0, 200_000]])
    first = epoch_windows(intervals, RULE, seed=1, genome_index=0, epoch=0)
    again = epoch_windows(intervals, RULE, seed=1, genome_index=0, epoch=0)
    for a, b in zip(first._arrays(), again._arrays(), strict=True):
        assert np.array_equal(a, b)
    next_epoch = epoch_windows(intervals, RULE, seed=1, genome_index=0, epoch=1)
    other_seed = epoch_windows(intervals, RULE, seed=2, genome_index=0, epoch=0)
    cuts = {tuple(np.sort(w.start)[:50]) for w in (first, next_epoch, other_seed)}
    assert len(cuts) == 3


def test_epoch_is_shuffled_not_in_genome_order():
    windows = epoch_windows(np.array([[0, 0, 500_000]]), RULE, seed=0, genome_index=0, epoch=0)
    order_correlation = np.corrcoef(np.arange(len(windows)), windows.start)[0, 1]
    assert abs(order_correlation) < 0.1


def test_stream_is_position_addressable_and_epochs_follow_each_other():
    intervals = np.array([[0, 0, 40_000]])
    stream = WindowStream([intervals], [1.0], RULE, seed=3)
    whole = stream.windows(0, 1000)
    fresh = WindowStream([intervals], [1.0], RULE, seed=3)
    part = fresh.windows(437, 100)
    assert np.array_equal(part.start, whole.start[437:537])
    epoch0 = epoch_windows(intervals, RULE, 3, 0, 0)
    epoch1 = epoch_windows(intervals, RULE, 3, 0, 1)
    n0 = len(epoch0)
    assert np.array_equal(whole.start[:n0], epoch0.start)
    assert np.array_equal(whole.start[n0 : n0 + 20], epoch1.start[:20])


def test_genomes_share_the_stream_by_weight_and_weight_zero_never_appears():
    intervals = np.array([[0, 0, 100_000]])
    stream = WindowStream([intervals, intervals, intervals], [3.0, 1.0, 0.0], RULE, seed=0)
    genome = stream.windows(0, 40_000).genome
    shares = np.bincount(genome, minlength=3) / len(genome)
    assert shares[0] == pytest.approx(0.75, abs=0.01) and shares[1] == pytest.approx(0.25, abs=0.01)
    assert shares[2] == 0
    # Each genome's slots run through its own epochs in order, also across mixing chunks and resumes.
    later = WindowStream([intervals, intervals, intervals], [3.0, 1.0, 0.0], RULE, seed=0).windows(30_000, 5_000)
    full = stream.windows(0, 35_000)
    assert np.array_equal(later.start, full.start[30_000:]) and np.array_equal(later.genome, full.genome[30_000:])
    second = full.take(full.genome == 1)
    n_epoch = len(epoch_windows(intervals, RULE, 0, 1, 0))
    assert np.array_equal(second.start[:n_epoch], epoch_windows(intervals, RULE, 0, 1, 0).start)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [float("nan"), 1.0]])
def test_bad_weights(weights):
    with pytest.raises(DnabertError, match="weight"):
        WindowStream([np.array([[0, 0, 1000]])] * 2, weights, RULE, seed=0)


def test_bad_length_rule():
    with pytest.raises(DnabertError, match="length_rule"):
        WindowRule(k=6, length_rule="uniform")


def test_windows_read_equal_python_slices_and_never_hold_n(tmp_path):
    rng = np.random.default_rng(2)
    records = {"a": random_contig(rng, 30_000, n_runs=30, iupac=40), "b": random_contig(rng, 5_000, n_runs=5)}
    fasta = write_fasta(tmp_path / "g.fa", records, width=61)
    genome = open_genome(fasta)
    truth = parse_fasta(fasta)
    for reverse_complement in (False, True):
        windows = epoch_windows(genome.intervals, RULE, 0, 0, 0, reverse_complement)
        codes, lengths = read_windows([genome], windows)
        assert not np.any(codes == INVALID_CODE)
        complement = str.maketrans("ACGTacgt", "TGCAtgca")
        for row in range(len(windows)):
            start, length = int(windows.start[row]), int(lengths[row])
            expected = truth[genome.contig_names[windows.contig[row]]][start : start + length]
            if windows.reverse[row]:
                expected = expected.translate(complement)[::-1]
            assert np.array_equal(codes[row, :length], encode_nucleotides(expected))
        if reverse_complement:
            assert np.mean(windows.reverse) == pytest.approx(0.5, abs=0.15)
        else:
            assert not windows.reverse.any()
