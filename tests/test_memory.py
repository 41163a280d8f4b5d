"""Memory at genome scale (issue 12, item 6): the window plan is lazy (no epoch-sized arrays), the first scan reads in
bounded chunks, a resume far into training counts the skipped epochs once, and the plan's lazy pieces (count, cut,
groups) agree with each other. Peak memory is measured in subprocesses (VmHWM), never timed."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dnabert.data import windows as windows_module
from dnabert.data.windows import (
    EpochPlan,
    WindowRule,
    WindowStream,
    _count_units,
    _cut_units,
    epoch_windows,
    plan_units,
)

ROOT = Path(__file__).resolve().parents[1]


def peak_growth_mb(code: str) -> float:
    """Run `code` in a fresh Python (numpy and the data package imported first); VmHWM growth in MB over it."""
    program = textwrap.dedent('''
        import json, re, numpy as np
        import dnabert.data.genome, dnabert.data.windows
        def status(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
        before = status("VmRSS")
    ''') + textwrap.dedent(code) + '\nprint(json.dumps((status("VmHWM") - before) / 1024))\n'
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_window_plan_memory_does_not_grow_with_the_epoch():
    """600 Mbp at 128 tokens is about 6M windows per epoch: a materialised epoch (what the plan was) takes
    several hundred MB; the lazy plan holds O(units) and one group of windows."""
    growth = peak_growth_mb('''
        from dnabert.data.windows import WindowRule, WindowStream
        intervals = np.array([[c, 0, 60_000_000] for c in range(10)])
        stream = WindowStream([intervals], [1.0], WindowRule(6, 128), seed=0)
        epoch = len(stream.plan(0, 0))
        assert epoch > 5_000_000, epoch
        for position in np.linspace(0, 2 * epoch, 50).astype(int):
            assert len(stream.windows(int(position), 64)) == 64
    ''')
    assert growth < 120, f"the window plan grew the process by {growth:.0f} MB"


def test_first_scan_reads_in_bounded_chunks(tmp_path):
    """A 64 MB FASTA scanned with 1 MB chunks: the process must not keep the file's pages (it did through the mmap:
    the whole genome in RSS, 3.3 GB on GRCh38)."""
    rng = np.random.default_rng(0)
    fasta = tmp_path / "big.fa"
    with fasta.open("wb") as handle:
        for contig in range(4):
            bases = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, 16_000_000)].reshape(-1, 80)
            lines = np.concatenate([bases, np.full((len(bases), 1), ord("\n"), np.uint8)], axis=1)
            handle.write(f">c{contig}\n".encode() + lines.tobytes())
    growth = peak_growth_mb(f'''
        from dnabert.data import genome
        genome._SCAN_CHUNK = 1 << 20
        opened = genome.Genome.open(genome.GenomeSource("g", {str(fasta)!r}), 6, genome.HeldOut(0.0),
                                    {str(tmp_path / "cache")!r})
        assert opened.intervals.tolist() == [[c, 0, 16_000_000] for c in range(4)]
    ''')
    assert growth < 32, f"the scan of a 64 MB FASTA grew the process by {growth:.0f} MB"


@pytest.mark.parametrize("rule", [WindowRule(6, 512), WindowRule(3, 16), WindowRule(6, 64, "fixed"),
                                  WindowRule(4, 128, "original")])
def test_counts_cuts_and_groups_agree(rule):
    """The epoch size comes from `_count_units`, the windows from `_cut_units` on any subset of units: both must
    give the same windows per unit, and a subset must be cut exactly as within the whole epoch."""
    rng = np.random.default_rng(3)
    sizes = np.concatenate([rng.integers(rule.k, 3 * rule.max_nucleotides, 300), rng.integers(60_000, 140_000, 8)])
    units = np.column_stack([rng.integers(0, 5, len(sizes)), rng.integers(0, 10**6, len(sizes)), np.zeros_like(sizes)])
    units[:, 2] = units[:, 1] + sizes
    ids = np.arange(len(units))
    owner, start, length = _cut_units(units, ids, 99, rule)
    assert np.array_equal(_count_units(units, ids, 99, rule), np.bincount(owner, minlength=len(units)))
    assert np.all(length >= rule.k) and np.all(length <= rule.max_nucleotides)
    subset = rng.permutation(len(units))[:40]
    sub_owner, sub_start, sub_length = _cut_units(units[subset], subset, 99, rule)
    whole = np.concatenate([np.flatnonzero(owner == unit) for unit in subset])
    assert np.array_equal(sub_start, start[whole]) and np.array_equal(sub_length, length[whole])
    plan = EpochPlan(units, rule, seed=1, genome_index=0, epoch=2)
    sizes_of_groups = [len(plan.group(group)) for group in range(plan.n_groups)]
    assert sizes_of_groups == np.diff(plan.window_bounds).tolist()
    assert sum(sizes_of_groups) == len(_cut_units(units, ids, plan.key, rule)[0])


def test_an_epoch_tiles_long_intervals_across_units():
    """Units split long intervals; an epoch still covers them with non-overlapping windows, each once, losing only
    each unit's phase and the pieces shorter than k."""
    intervals = np.array([[0, 100, 1_000_100], [1, 0, 300_000], [1, 300_010, 300_400]])
    rule = WindowRule(6)
    windows = epoch_windows(intervals, rule, seed=4, genome_index=0, epoch=1)
    assert len(plan_units(intervals)) == 15 + 4 + 1
    covered = 0
    for contig, first, end in intervals:
        inside = (windows.contig == contig) & (windows.start >= first) & (windows.start < end)
        order = np.argsort(windows.start[inside])
        starts, ends = windows.start[inside][order], (windows.start + windows.length)[inside][order]
        assert np.all(ends <= end) and np.all(starts[1:] >= ends[:-1])
        covered += int(np.sum(ends - starts))
    assert covered == int(windows.length.sum())  # every window lies inside an interval
    assert covered / int(np.sum(intervals[:, 2] - intervals[:, 1])) > 0.98


def test_a_micro_batch_mixes_many_places_of_the_genome():
    """The shuffle is per group of units, not per epoch: a micro-batch still draws from many random places."""
    intervals = np.array([[0, 0, 50_000_000]])
    windows = epoch_windows(intervals, WindowRule(6), seed=0, genome_index=0, epoch=0)
    units = windows.start // 65_536
    for first in (0, 640, 100_000):
        assert len(np.unique(units[first : first + 64])) >= 48
    regions = np.unique(windows.start[:1000] // 5_000_000)
    assert len(regions) == 10  # the first group already spans the whole 50 Mbp


def test_resume_counts_skipped_epochs_once_and_workers_inherit_them(monkeypatch):
    intervals = np.array([[0, 0, 400_000], [1, 0, 250_000]])
    rule = WindowRule(6)
    walked = WindowStream([intervals], [1.0], rule, seed=5)
    deep = sum(len(walked.plan(0, epoch)) for epoch in range(31)) + 17
    expected = walked.windows(deep, 64)
    resumed = WindowStream([intervals], [1.0], rule, seed=5)
    resumed.seek(deep)
    worker_copy = pickle.loads(pickle.dumps(resumed))  # what a spawned worker gets (a forked one shares memory)
    built: list[int] = []
    original_init = EpochPlan.__init__

    def counting_init(self, *args, **kwargs) -> None:
        built.append(args[4] if len(args) > 4 else kwargs["epoch"])
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(EpochPlan, "__init__", counting_init)
    got = worker_copy.windows(deep, 64)
    assert set(built) <= {31, 32}  # only the epoch being read: the 31 before it are not counted again
    for name in ("genome", "contig", "start", "length", "reverse"):
        assert np.array_equal(getattr(got, name), getattr(expected, name))


def test_stream_caches_stay_bounded_over_a_long_run():
    intervals = np.array([[0, 0, 20_000_000]])
    stream = WindowStream([intervals] * 3, [1.0, 2.0, 3.0], WindowRule(6), seed=0)
    last = 4_000_000
    for position in range(0, last, 250_000):
        stream.windows(position, 256)
    assert last > windows_module._MIX_CHUNK * windows_module._MIX_BLOCK * 3  # the run passed several mixing blocks
    assert len(stream._mix_counts) <= 2
    assert len(stream._groups) <= 3 + 2 and len(stream._plans) <= 2 * 3
