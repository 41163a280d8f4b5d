"""Cut A/C/G/T intervals into training windows, deterministically per (seed, epoch), and lay them out as one
infinite, position-addressable stream.

Why it looks like this:
- Nothing is materialised: an epoch is a plan computed from (seed, genome, epoch), so any stream position can be
  recomputed exactly after a restart, in any process, without files on disk. The plan is lazy, because a whole
  epoch's windows do not fit in a data process (GRCh38 at 64 tokens: 60M windows; a 32 Gbp corpus at 128 tokens:
  about 320M): intervals are split into units of at most 2 x 64 kbp, an epoch is a seeded permutation of the units
  plus the window count of each, and the units are taken in groups of about 64k windows, each group cut and
  shuffled only when the stream reaches it. Memory is O(units), not O(windows).
- Every random draw of the cut is a hash of (seed, genome, epoch, unit, piece) (counter-based, SplitMix64), so a
  unit's cut is the same whether it is counted for the epoch size or cut for its group, in any process, and
  counting an epoch is vectorised over all units.
- Length rule "original" is the original DNABERT cut: while more than M = max_tokens - 2 + k - 1 nucleotides
  remain, the next piece is M long with probability 0.5, else max(int(u*M), 5); the remainder is the last
  piece. Rule "fixed" cuts pieces of exactly M and drops each unit's shorter tail (no padding at all).
  Every epoch redraws the cut and skips a random phase at the start of each unit longer than M (so cut
  points move between epochs; the skipped bp are used in other epochs). A unit of at most M bp is one
  window. Windows shorter than k have no k-mer and are dropped: the original's 5-nt minimum gives zero 6-mers.
- The shuffle is two-level: a uniform permutation of the units, then a uniform permutation of each group's
  windows. A micro-batch therefore mixes windows from hundreds of places of the genome (GRCh38 at 512 tokens:
  about 370 units of 64-128 kbp per group), not one window from each of B uniformly random places.
- Several genomes share the stream by weight: each has its own infinite sequence of epochs, and a seeded
  multinomial draw per chunk of stream slots (vectorised) says which genome supplies each slot.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from dnabert.data.genome import Genome
from dnabert.data.tokenizers.kmer import check_k
from dnabert.errors import DnabertError

LENGTH_RULES = ("original", "fixed")
ORIGINAL_MIN_PIECE = 5  # max(int(u * M), 5) in the original cut
_MIX_CHUNK = 4096  # stream slots per genome-mixing draw
_MIX_BLOCK = 256  # chunks drawn by one multinomial call (prefix counts are summed per block)
_CUT, _SHUFFLE_RC, _MIX_COUNTS, _MIX_ORDER, _GROUP_SHUFFLE = 1, 2, 3, 4, 5  # RNG tags: one purpose per seed sequence
_UNIT_BP = 1 << 16  # intervals are split into units of [64, 128) kbp: the grain of the epoch shuffle
_GROUP_WINDOWS = 1 << 16  # about this many windows are cut and shuffled together
_COUNT_PIECES = 1 << 18  # bound on the pieces hashed at once while counting an epoch (~50 MB)
_COUNT_THREADS = 8  # epochs counted at once when a resume skips many
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PHASE_SALT = np.uint64(0x5DEECE66D)


@dataclass(frozen=True)
class WindowRule:
    """How long windows are: the model's token budget fixes the longest window, the rule the distribution.

    `window_bp` sets the longest window directly, for tokenizers whose tokens have no fixed length (BPE): windows
    of that many bp are tokenised and then cut to `max_tokens`. `k` is then only the shortest window kept.
    """

    k: int
    max_tokens: int = 512
    length_rule: str = "original"
    window_bp: int | None = None

    def __post_init__(self) -> None:
        check_k(self.k)
        if self.length_rule not in LENGTH_RULES:
            choices = ", ".join(LENGTH_RULES)
            raise DnabertError(f"data.length_rule={self.length_rule!r} is unknown; use one of {choices}.")
        if self.max_tokens < 3:
            raise DnabertError(f"data.max_tokens={self.max_tokens} leaves no room for a k-mer between [CLS] and [SEP].")
        if self.window_bp is not None and self.window_bp < self.k:
            raise DnabertError(f"data.window_bp={self.window_bp} is shorter than the shortest window ({self.k} bp).")

    @property
    def max_nucleotides(self) -> int:
        """[CLS] + (max_tokens - 2) k-mers + [SEP]; n k-mers span n + k - 1 nucleotides. Or `window_bp`."""
        if self.window_bp is not None:
            return self.window_bp
        return self.max_tokens - 2 + self.k - 1


@dataclass
class Windows:
    """A list of windows as parallel arrays (0-based, forward-strand start; `reverse` = read reverse-complement)."""

    genome: np.ndarray
    contig: np.ndarray
    start: np.ndarray
    length: np.ndarray
    reverse: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def take(self, index: np.ndarray | slice) -> Windows:
        return Windows(*(array[index] for array in self._arrays()))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.genome, self.contig, self.start, self.length, self.reverse

    @classmethod
    def concatenate(cls, parts: list[Windows]) -> Windows:
        if not parts:
            return cls(*(np.zeros(0, dtype) for dtype in (np.int32, np.int32, np.int64, np.int32, bool)))
        return cls(*(np.concatenate(arrays) for arrays in zip(*(p._arrays() for p in parts), strict=True)))


def plan_units(intervals: np.ndarray) -> np.ndarray:
    """Intervals (n, 3) split into units of [_UNIT_BP, 2 * _UNIT_BP) bp (shorter intervals stay whole): the grain of
    the epoch shuffle. Splitting relative to each interval's start keeps every unit at least as long as its
    interval or _UNIT_BP, so no unit falls below k."""
    contig, start, end = (intervals[:, i].astype(np.int64) for i in range(3))
    per_interval = np.maximum((end - start) // _UNIT_BP, 1)
    owner = np.repeat(np.arange(len(start)), per_interval)
    index_in_interval = np.arange(int(per_interval.sum())) - np.repeat(np.cumsum(per_interval) - per_interval,
                                                                       per_interval)
    unit_start = start[owner] + index_in_interval * _UNIT_BP
    is_last = index_in_interval == per_interval[owner] - 1
    unit_end = np.where(is_last, end[owner], unit_start + _UNIT_BP)
    return np.column_stack([contig[owner], unit_start, unit_end]).reshape(-1, 3)


def cut_intervals(
    intervals: np.ndarray, rule: WindowRule, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contig, start, length) of the windows tiling `intervals` (n, 3), in interval order; `rng` seeds the cut."""
    key = int(rng.integers(0, 2**63))
    owner, start, length = _cut_units(intervals, np.arange(len(intervals)), key, rule)
    return intervals[owner, 0].astype(np.int64), start, length


def _cut_units(
    units: np.ndarray, unit_ids: np.ndarray, key: int, rule: WindowRule
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of `units`, start, length) of the windows of each unit, unit after unit; a pure function of
    (key, unit id), so any subset of units is cut exactly as in the whole epoch."""
    start, owner, offset, length, tail = _pieces(units, unit_ids, key, rule)
    pieces_per_unit = np.bincount(owner, minlength=len(units))
    # Each unit's pieces, then its tail: piece i goes to i + owner[i], unit u's tail after its last piece.
    merged = len(owner) + len(units)
    all_owner, all_offset, all_length = (np.empty(merged, np.int64) for _ in range(3))
    piece_slot = np.arange(len(owner)) + owner
    tail_slot = np.cumsum(pieces_per_unit) + np.arange(len(units))
    all_owner[piece_slot], all_owner[tail_slot] = owner, np.arange(len(units))
    all_offset[piece_slot], all_offset[tail_slot] = offset, units[:, 2] - start - tail
    all_length[piece_slot], all_length[tail_slot] = length, tail
    keep = all_length >= rule.k
    return all_owner[keep], start[all_owner[keep]] + all_offset[keep], all_length[keep]


def _count_units(units: np.ndarray, unit_ids: np.ndarray, key: int, rule: WindowRule) -> np.ndarray:
    """Windows of each unit, as `_cut_units` would cut them, without placing them (the epoch-size hot path)."""
    start, size, is_long, unit_keys = _phased(units, unit_ids, key, rule)
    if rule.length_rule != "original":
        return np.where(is_long, size // rule.max_nucleotides, size >= rule.k)
    first, guess, length, total, target = _original_draws(size, is_long, rule.max_nucleotides, unit_keys)
    after_drawn = np.searchsorted(total, total[first] + target, side="left")  # one past each unit's last piece
    short_pieces = np.concatenate([[0], np.cumsum(length < rule.k)])
    drawn = after_drawn - first - (short_pieces[after_drawn] - short_pieces[first])
    return drawn + (size - (total[after_drawn] - total[first]) >= rule.k)


def _pieces(
    units: np.ndarray, unit_ids: np.ndarray, key: int, rule: WindowRule
) -> tuple[np.ndarray, ...]:
    """The cut of each unit: its start after the random phase; the pieces before its tail as (owner, offset from
    that start, length), unit after unit; and each unit's tail length (the original rule's remainder, the whole of
    a unit of at most M bp, 0 where the fixed rule drops it)."""
    start, size, is_long, unit_keys = _phased(units, unit_ids, key, rule)
    longest = rule.max_nucleotides
    if rule.length_rule == "original":
        first, guess, length, total, target = _original_draws(size, is_long, longest, unit_keys)
        owner = np.repeat(np.arange(len(size)), guess)
        offset = total[:-1] - total[first][owner]
        is_drawn = offset < target[owner]  # pieces that start while more than `longest` remains
        owner, offset, length = owner[is_drawn], offset[is_drawn], length[is_drawn]
        used = np.zeros(len(size), dtype=np.int64)
        is_last = np.append(owner[1:] != owner[:-1], True) if len(owner) else np.zeros(0, bool)
        used[owner[is_last]] = offset[is_last] + length[is_last]
        tail = size - used
    else:
        pieces_per_unit = np.where(is_long, size // longest, 0)
        owner = np.repeat(np.arange(len(size)), pieces_per_unit)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(pieces_per_unit) - pieces_per_unit, pieces_per_unit)
        offset, length = index * longest, np.full(len(owner), longest, dtype=np.int64)
        tail = np.where(is_long, 0, size)
    return start, owner, offset, length, tail


def _phased(
    units: np.ndarray, unit_ids: np.ndarray, key: int, rule: WindowRule
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's start and size after its random phase (at most what keeps one full window after it), whether it
    is longer than a window, and its hash key."""
    longest = rule.max_nucleotides
    start, end = units[:, 1].astype(np.int64), units[:, 2].astype(np.int64)
    size = end - start
    is_long = size > longest
    unit_keys = _mix64(unit_ids.astype(np.uint64) * _GOLDEN + np.uint64(key))
    phase_cap = np.clip(size - longest, 0, longest) + 1
    phase = np.where(is_long, _uniform(_mix64(unit_keys ^ _PHASE_SALT), phase_cap), 0)
    return start + phase, size - phase, is_long, unit_keys


def _original_draws(
    size: np.ndarray, is_long: np.ndarray, longest: int, unit_keys: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The DNABERT cut's i.i.d. piece lengths, drawn for all units at once: unit u's candidates are
    length[first[u] : first[u] + guess[u]], `total` their running sum (total[i] = sum of length[:i]); the unit uses
    those that start before target[u] = size - longest (while more than `longest` remains).

    Piece j of a unit is hash(unit key, j). Each unit draws its expected need plus 3 standard deviations; if any
    unit falls short (rare), all draw again with that unit's guess doubled.
    """
    target = np.where(is_long, size - longest, 0)
    need = target / (0.75 * longest)  # the mean piece is about 3/4 of a window
    guess = np.where(is_long, (need + 3 * np.sqrt(need)).astype(np.int64) + 8, 0)
    while True:
        first = np.cumsum(guess) - guess
        base = unit_keys + _GOLDEN - first.astype(np.uint64) * _GOLDEN  # piece j of u: base[u] + (first[u]+j)*G
        hashes = np.repeat(base, guess)
        hashes += np.arange(len(hashes), dtype=np.uint64) * _GOLDEN
        drawn = _uniform(_mix64(hashes), np.uint64(2 * longest))  # >= longest: a full piece (p = 0.5), else u*M
        length = np.where(drawn >= longest, longest, np.maximum(drawn, ORIGINAL_MIN_PIECE))
        total = np.concatenate([[0], np.cumsum(length)])
        short = total[first + guess] - total[first] < target
        if not short.any():
            return first, guess, length, total, target
        guess = np.where(short, guess * 2, guess)


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: uint64 -> well-mixed uint64, elementwise (a counter-based random draw)."""
    values = values ^ (values >> np.uint64(30))
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(27)
    values *= np.uint64(0x94D049BB133111EB)
    values ^= values >> np.uint64(31)
    return values


def _uniform(hashes: np.ndarray, bound: np.ndarray | np.uint64) -> np.ndarray:
    """Integers uniform in [0, bound) (bound < 2**32) from hashes: the top 32 bits scaled (Lemire), as int64."""
    return (((hashes >> np.uint64(32)) * np.asarray(bound, dtype=np.uint64)) >> np.uint64(32)).astype(np.int64)


def _epoch_key(seed: int, genome_index: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, genome_index, epoch, _CUT]).generate_state(1, np.uint64)[0])


class EpochPlan:
    """One genome's epoch without its windows: the unit order, each group's units and window range. Windows are
    made group by group (`group`); `len` is the epoch's window count."""

    def __init__(
        self, units: np.ndarray, rule: WindowRule, seed: int, genome_index: int, epoch: int,
        reverse_complement: bool = False,
    ) -> None:
        self.units, self.rule, self.reverse_complement = units, rule, reverse_complement
        self.seed, self.genome_index, self.epoch = seed, genome_index, epoch
        self.key = _epoch_key(seed, genome_index, epoch)
        order = np.random.default_rng([seed, genome_index, epoch, _SHUFFLE_RC]).permutation(len(units))
        window_start = np.concatenate([[0], np.cumsum(self._unit_window_counts()[order])])
        group_of_unit = window_start[:-1] // _GROUP_WINDOWS
        self.unit_bounds = np.append(np.flatnonzero(np.diff(group_of_unit, prepend=-1)), len(units))
        self.window_bounds = window_start[self.unit_bounds]
        self.order = order.astype(np.int32 if len(units) < 2**31 else np.int64)

    def _unit_window_counts(self) -> np.ndarray:
        """Windows of every unit this epoch, cut in slices of units so the pieces in memory stay bounded."""
        counts = np.zeros(len(self.units), dtype=np.int32)
        draws = np.cumsum((self.units[:, 2] - self.units[:, 1]) // max(self.rule.max_nucleotides // 2, 1) + 9)
        cuts = np.searchsorted(draws, np.arange(_COUNT_PIECES, draws[-1] if len(draws) else 0, _COUNT_PIECES))
        bounds = np.unique(np.concatenate([[0], cuts, [len(self.units)]]))
        for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            counts[first:last] = _count_units(self.units[first:last], np.arange(first, last), self.key, self.rule)
        return counts

    def __len__(self) -> int:
        return int(self.window_bounds[-1])

    @property
    def n_groups(self) -> int:
        return len(self.window_bounds) - 1

    def group(self, index: int) -> Windows:
        """Group `index` shuffled: the epoch's windows [window_bounds[index], window_bounds[index + 1])."""
        ids = self.order[self.unit_bounds[index] : self.unit_bounds[index + 1]].astype(np.int64)
        owner, start, length = _cut_units(self.units[ids], ids, self.key, self.rule)
        rng = np.random.default_rng([self.seed, self.genome_index, self.epoch, _GROUP_SHUFFLE, index])
        order = rng.permutation(len(start))
        reverse = rng.random(len(start)) < 0.5 if self.reverse_complement else np.zeros(len(start), dtype=bool)
        genome = np.full(len(start), self.genome_index, dtype=np.int32)
        contig = self.units[ids[owner[order]], 0].astype(np.int32)
        return Windows(genome, contig, start[order], length[order].astype(np.int32), reverse)

    def windows(self) -> Windows:
        """The whole epoch in stream order (for tests and exports; training reads it group by group)."""
        return Windows.concatenate([self.group(index) for index in range(self.n_groups)])


def epoch_windows(
    intervals: np.ndarray,
    rule: WindowRule,
    seed: int,
    genome_index: int,
    epoch: int,
    reverse_complement: bool = False,
) -> Windows:
    """All windows of one genome's epoch, shuffled; a pure function of its arguments."""
    return EpochPlan(plan_units(intervals), rule, seed, genome_index, epoch, reverse_complement).windows()


class WindowStream:
    """The infinite training stream: slot i of the stream is a window of one genome, a pure function of i."""

    def __init__(
        self,
        interval_sets: list[np.ndarray],
        weights: list[float],
        rule: WindowRule,
        seed: int,
        reverse_complement: bool = False,
    ) -> None:
        weights_array = np.asarray(weights, dtype=np.float64)
        if len(weights_array) != len(interval_sets) or not len(weights_array):
            raise DnabertError("the data config needs at least one genome with a weight.")
        if not np.all(np.isfinite(weights_array)) or np.any(weights_array < 0) or weights_array.sum() <= 0:
            raise DnabertError(f"genome weights {list(weights)} must be >= 0 with a positive sum; fix `weight`.")
        self.units = [plan_units(intervals) for intervals in interval_sets]
        self.probabilities = weights_array / weights_array.sum()
        self.rule = rule
        self.seed = seed
        self.reverse_complement = reverse_complement
        self._epoch_starts = [[0] for _ in interval_sets]  # per genome: first stream index of each epoch
        self._plans: OrderedDict[tuple[int, int], EpochPlan] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int, int], Windows] = OrderedDict()
        self._mix_prefix: dict[int, np.ndarray] = {0: np.zeros(len(interval_sets), dtype=np.int64)}
        self._mix_counts: OrderedDict[int, np.ndarray] = OrderedDict()
        self._last_chunk: tuple[int, np.ndarray, np.ndarray] = (-1, np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __getstate__(self) -> dict:
        # Spawned workers recompute plans and groups themselves; the epoch starts travel (they are the costly part).
        return {**self.__dict__, "_plans": OrderedDict(), "_groups": OrderedDict()}

    def plan(self, genome_index: int, epoch: int) -> EpochPlan:
        """One genome's epoch plan (the last two per genome are kept: a micro-batch may straddle two epochs)."""
        key = (genome_index, epoch)
        if key not in self._plans:
            self._plans[key] = EpochPlan(
                self.units[genome_index], self.rule, self.seed, genome_index, epoch, self.reverse_complement
            )
            if not len(self._plans[key]):
                raise DnabertError(f"genome {genome_index} has no window of at least k={self.rule.k} bp to train on.")
            if len(self._plans) > 2 * len(self.units):
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        return self._plans[key]

    def epoch(self, genome_index: int, epoch: int) -> Windows:
        """One genome's whole epoch in stream order (materialised: for tests and exports, not the hot path)."""
        return self.plan(genome_index, epoch).windows()

    def _group(self, genome_index: int, epoch: int, group: int) -> Windows:
        """One group's windows; one or two groups per genome are kept (each genome's slots go through its groups
        in order, and the mixing interleaves the genomes)."""
        key = (genome_index, epoch, group)
        if key not in self._groups:
            self._groups[key] = self.plan(genome_index, epoch).group(group)
            if len(self._groups) > len(self.units) + 2:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def seek(self, position: int) -> None:
        """Count the epochs each genome goes through before stream `position`, here and once: dataloader workers
        forked or spawned afterwards inherit the epoch starts instead of each recounting every earlier epoch."""
        chunk = position // _MIX_CHUNK
        labels, _ = self._chunk_slots(chunk)  # each genome's index at `position`: its slots before it
        before = self._prefix(chunk) + np.bincount(labels[: position - chunk * _MIX_CHUNK], minlength=len(self.units))
        for genome_index, index in enumerate(before.tolist()):
            if self.probabilities[genome_index] <= 0:
                continue
            starts = self._epoch_start_of(genome_index, 0)
            threads = min(_COUNT_THREADS, os.cpu_count() or 1)
            while starts[-1] <= index:  # epochs are independent: count several at once (numpy frees the GIL)
                ahead = math.ceil((index + 1 - starts[-1]) / (starts[-1] / (len(starts) - 1)))
                epochs = range(len(starts) - 1, len(starts) - 1 + max(1, min(threads, ahead)))
                with ThreadPoolExecutor(len(epochs)) as pool:
                    sizes = list(pool.map(partial(self._epoch_size, genome_index), epochs))
                for size in sizes:
                    if starts[-1] <= index:
                        starts.append(starts[-1] + size)

    def _epoch_size(self, genome_index: int, epoch: int) -> int:
        """Window count of an epoch without keeping its plan (a resume skips many)."""
        if (genome_index, epoch) in self._plans:
            return len(self._plans[genome_index, epoch])
        return len(EpochPlan(self.units[genome_index], self.rule, self.seed, genome_index, epoch))

    def windows(self, first: int, count: int) -> Windows:
        """The windows at stream positions [first, first + count), in stream order."""
        genome, index = self._genome_slots(first, count)
        return _grouped(genome, lambda genome_index, rows: self._genome_windows(genome_index, index[rows]))

    def _genome_windows(self, genome_index: int, index: np.ndarray) -> Windows:
        """Windows number `index` of one genome's own stream (its epochs back to back)."""
        starts = self._epoch_start_of(genome_index, int(index.max()))
        epoch_of = np.searchsorted(starts, index, side="right") - 1
        return _grouped(
            epoch_of, lambda epoch, rows: self._epoch_windows(genome_index, epoch, index[rows] - starts[epoch])
        )

    def _epoch_start_of(self, genome_index: int, index: int) -> list[int]:
        """The genome's epoch starts, counted far enough that the last one lies beyond its stream index `index`."""
        starts = self._epoch_starts[genome_index]
        while starts[-1] <= index:
            starts.append(starts[-1] + len(self.plan(genome_index, len(starts) - 1)))
        return starts

    def _epoch_windows(self, genome_index: int, epoch: int, local: np.ndarray) -> Windows:
        """Windows number `local` of one genome's epoch, fetched group by group."""
        bounds = self.plan(genome_index, epoch).window_bounds
        group_of = np.searchsorted(bounds, local, side="right") - 1
        return _grouped(
            group_of, lambda group, rows: self._group(genome_index, epoch, group).take(local[rows] - bounds[group])
        )

    def _genome_slots(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """For stream positions [first, first+count): the genome of each slot and its index in that genome's
        stream (how many earlier slots went to the same genome)."""
        positions = np.arange(first, first + count, dtype=np.int64)
        chunks = positions // _MIX_CHUNK
        genome = np.empty(count, dtype=np.int64)
        index = np.empty(count, dtype=np.int64)
        for chunk in range(int(chunks[0]), int(chunks[-1]) + 1):
            rows = chunks == chunk
            labels, slot_index = self._chunk_slots(chunk)
            offsets = positions[rows] - chunk * _MIX_CHUNK
            genome[rows], index[rows] = labels[offsets], slot_index[offsets]
        return genome, index

    def _chunk_slots(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Genome label and per-genome stream index of every slot of one chunk (the last one is kept)."""
        if self._last_chunk[0] != chunk:
            counts = self._chunk_counts(chunk)
            rng = np.random.default_rng([self.seed, chunk, _MIX_ORDER])
            labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
            one_hot = labels[:, None] == np.arange(len(counts))[None, :]
            rank_in_chunk = (np.cumsum(one_hot, axis=0) - one_hot)[np.arange(len(labels)), labels]
            self._last_chunk = (chunk, labels, self._prefix(chunk)[labels] + rank_in_chunk)
        return self._last_chunk[1], self._last_chunk[2]

    def _chunk_counts(self, chunk: int) -> np.ndarray:
        block = chunk // _MIX_BLOCK
        if block not in self._mix_counts:
            rng = np.random.default_rng([self.seed, block, _MIX_COUNTS])
            self._mix_counts[block] = rng.multinomial(_MIX_CHUNK, self.probabilities, size=_MIX_BLOCK)
            if len(self._mix_counts) > 2:  # a week's run passes thousands of blocks: keep only the recent ones
                self._mix_counts.popitem(last=False)
        self._mix_counts.move_to_end(block)
        return self._mix_counts[block][chunk % _MIX_BLOCK]

    def _prefix(self, chunk: int) -> np.ndarray:
        """Slots each genome got before `chunk`: summed block by block, so resuming far ahead stays cheap."""
        block = chunk // _MIX_BLOCK
        for previous in range(max(b for b in self._mix_prefix if b <= block), block):
            self._chunk_counts(previous * _MIX_BLOCK)
            self._mix_prefix[previous + 1] = self._mix_prefix[previous] + self._mix_counts[previous].sum(0)
        self._chunk_counts(chunk)
        return self._mix_prefix[block] + self._mix_counts[block][: chunk % _MIX_BLOCK].sum(0)


def _grouped(keys: np.ndarray, fetch) -> Windows:
    """Fetch the windows of each group of equal keys and put them back in the order of `keys`."""
    first = int(keys[0])
    if np.all(keys == first):  # the common case: one genome, one epoch
        return fetch(first, slice(None))
    parts, order = [], []
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        parts.append(fetch(int(key), rows))
        order.append(rows)
    return Windows.concatenate(parts).take(np.argsort(np.concatenate(order), kind="stable"))


@dataclass
class SequenceBatch:
    """Sequences ready to tokenise: codes (n, L) uint8 valid up to `lengths`, and where each row came from."""

    codes: np.ndarray
    lengths: np.ndarray
    window: np.ndarray  # (n, 4) int64: genome_index, contig_index, start, end


def read_windows(genomes: list[Genome], windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Nucleotide codes (n, longest) of the windows (reverse-complemented where asked) and their lengths.

    Rows shorter than the longest repeat their last base as filler; callers mask by length. One gather per
    genome and FASTA file: the cost is a fancy-index over the batch, not a read per window.
    """
    lengths = windows.length.astype(np.int64)
    columns = np.minimum(np.arange(lengths.max(initial=1))[None, :], lengths[:, None] - 1)
    columns = np.where(windows.reverse[:, None], lengths[:, None] - 1 - columns, columns)
    positions = windows.start[:, None] + columns
    codes = np.empty(positions.shape, dtype=np.uint8)
    for genome_index in np.unique(windows.genome):
        rows = np.flatnonzero(windows.genome == genome_index)
        codes[rows] = genomes[genome_index].gather_codes(windows.contig[rows], positions[rows])
    # A=0 T=1 C=2 G=3: the complement flips the lowest bit.
    codes[windows.reverse] ^= 1
    return codes, lengths
