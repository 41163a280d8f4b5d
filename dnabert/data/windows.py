"""Cut A/C/G/T intervals into training windows, deterministically per (seed, epoch), and lay them out as one
infinite, position-addressable stream.

Why it looks like this:
- Nothing is materialised: an epoch's windows are a few numpy arrays computed from (seed, genome, epoch), so any
  stream position can be recomputed exactly after a restart, in any process, without files on disk.
- Length rule "original" is the DNABERT cut (recipe.md): while more than M = max_tokens - 2 + k - 1 nucleotides
  remain, the next piece is M long with probability 0.5, else max(int(u*M), 5); the remainder is the last
  piece. Rule "fixed" cuts pieces of exactly M and drops each interval's shorter tail (no padding at all).
  Every epoch redraws the cut and skips a random phase at the start of each interval longer than M (so cut
  points move between epochs; the skipped bp are used in other epochs). An interval of at most M bp is one
  window. Windows shorter than k have no k-mer and are dropped: the original's 5-nt minimum gives zero 6-mers.
- Several genomes share the stream by weight: each has its own infinite sequence of epochs, and a seeded
  multinomial draw per chunk of stream slots (vectorised) says which genome supplies each slot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from dnabert.data.genome import Genome
from dnabert.data.tokenizers.kmer import check_k
from dnabert.errors import DnabertError

LENGTH_RULES = ("original", "fixed")
ORIGINAL_MIN_PIECE = 5  # max(int(u * M), 5) in the original cut
_MIX_CHUNK = 4096  # stream slots per genome-mixing draw
_MIX_BLOCK = 256  # chunks drawn by one multinomial call (prefix counts are summed per block)
_CUT, _SHUFFLE_RC, _MIX_COUNTS, _MIX_ORDER = 1, 2, 3, 4  # RNG stream tags: one purpose per seed sequence


@dataclass(frozen=True)
class WindowRule:
    """How long windows are: the model's token budget fixes the longest window, the rule the distribution."""

    k: int
    max_tokens: int = 512
    length_rule: str = "original"

    def __post_init__(self) -> None:
        check_k(self.k)
        if self.length_rule not in LENGTH_RULES:
            choices = ", ".join(LENGTH_RULES)
            raise DnabertError(f"data.length_rule={self.length_rule!r} is unknown; use one of {choices}.")
        if self.max_tokens < 3:
            raise DnabertError(f"data.max_tokens={self.max_tokens} leaves no room for a k-mer between [CLS] and [SEP].")

    @property
    def max_nucleotides(self) -> int:
        """[CLS] + (max_tokens - 2) k-mers + [SEP]; n k-mers span n + k - 1 nucleotides."""
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
        return cls(*(np.concatenate(arrays) for arrays in zip(*(p._arrays() for p in parts), strict=True)))


def cut_intervals(
    intervals: np.ndarray, rule: WindowRule, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contig, start, length) of the windows tiling `intervals` (n, 3), in interval order."""
    longest = rule.max_nucleotides
    contig, start, end = (intervals[:, i].astype(np.int64) for i in range(3))
    size = end - start
    is_long = size > longest
    # Random phase, at most what keeps one full window after it.
    phase = np.where(is_long, rng.integers(0, np.clip(size - longest, 0, longest) + 1), 0)
    start, size = start + phase, size - phase
    pieces_per_interval, lengths = (
        _original_pieces(size, is_long, longest, rng)
        if rule.length_rule == "original"
        else _fixed_pieces(size, is_long, longest)
    )
    owner = np.repeat(np.arange(len(size)), pieces_per_interval)
    first_piece = np.cumsum(pieces_per_interval) - pieces_per_interval
    offset_in_interval = np.cumsum(lengths) - lengths
    offset_in_interval -= np.repeat(offset_in_interval[first_piece], pieces_per_interval)
    keep = lengths >= rule.k
    return contig[owner][keep], (start[owner] + offset_in_interval)[keep], lengths[keep]


def _original_pieces(
    size: np.ndarray, is_long: np.ndarray, longest: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The DNABERT cut: i.i.d. piece lengths consumed interval after interval, plus each interval's remainder.

    Pieces come from one pool in order, so interval i uses pool[p_i:p_{i+1}]; only the search for each p_{i+1}
    loops in Python (once per long interval), the rest is vectorised.
    """
    need = int(size[is_long].sum())
    pool = _draw_original_pieces(rng, need // (longest // 2) + 64, longest)
    pool_end = np.concatenate([[0], np.cumsum(pool)])
    pointers = np.zeros(len(size) + 1, dtype=np.int64)  # pool index after each interval's pieces
    pointer = 0
    for index in np.flatnonzero(is_long):
        target = pool_end[pointer] + size[index] - longest  # take pieces until at most `longest` remains
        after = int(np.searchsorted(pool_end, target, side="left"))
        while after >= len(pool_end):  # pool exhausted (rare): extend it from the same stream
            pool = np.concatenate([pool, _draw_original_pieces(rng, len(pool) + 64, longest)])
            pool_end = np.concatenate([[0], np.cumsum(pool)])
            after = int(np.searchsorted(pool_end, target, side="left"))
        pointers[index + 1] = pointer = after
    pointers = np.maximum.accumulate(pointers)  # short intervals draw nothing: carry the pointer over them
    drawn = np.diff(pointers)
    remainder = size - (pool_end[pointers[1:]] - pool_end[pointers[:-1]])
    pieces_per_interval = drawn + 1
    lengths = np.empty(int(pieces_per_interval.sum()), dtype=np.int64)
    last_piece = np.cumsum(pieces_per_interval) - 1
    is_drawn = np.ones(len(lengths), dtype=bool)
    is_drawn[last_piece] = False
    lengths[is_drawn] = pool[: pointers[-1]]
    lengths[last_piece] = remainder
    return pieces_per_interval, lengths


def _draw_original_pieces(rng: np.random.Generator, count: int, longest: int) -> np.ndarray:
    full = rng.random(count) >= 0.5
    random_length = np.maximum((rng.random(count) * longest).astype(np.int64), ORIGINAL_MIN_PIECE)
    return np.where(full, longest, random_length)


def _fixed_pieces(size: np.ndarray, is_long: np.ndarray, longest: int) -> tuple[np.ndarray, np.ndarray]:
    pieces_per_interval = np.where(is_long, size // longest, 1)
    lengths = np.repeat(np.where(is_long, longest, size), pieces_per_interval)
    return pieces_per_interval, lengths


def epoch_windows(
    intervals: np.ndarray,
    rule: WindowRule,
    seed: int,
    genome_index: int,
    epoch: int,
    reverse_complement: bool = False,
) -> Windows:
    """All windows of one genome's epoch, shuffled; a pure function of its arguments."""
    contig, start, length = cut_intervals(intervals, rule, np.random.default_rng([seed, genome_index, epoch, _CUT]))
    rng = np.random.default_rng([seed, genome_index, epoch, _SHUFFLE_RC])
    order = rng.permutation(len(start))
    reverse = rng.random(len(start)) < 0.5 if reverse_complement else np.zeros(len(start), dtype=bool)
    genome = np.full(len(start), genome_index, dtype=np.int32)
    return Windows(genome, contig[order].astype(np.int32), start[order], length[order].astype(np.int32), reverse)


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
        self.interval_sets = interval_sets
        self.probabilities = weights_array / weights_array.sum()
        self.rule = rule
        self.seed = seed
        self.reverse_complement = reverse_complement
        self._epoch_starts = [[0] for _ in interval_sets]  # per genome: first stream index of each epoch
        self._epochs: OrderedDict[tuple[int, int], Windows] = OrderedDict()
        self._mix_prefix: dict[int, np.ndarray] = {0: np.zeros(len(interval_sets), dtype=np.int64)}
        self._mix_counts: dict[int, np.ndarray] = {}
        self._last_chunk: tuple[int, np.ndarray, np.ndarray] = (-1, np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __getstate__(self) -> dict:
        # Spawned workers recompute epochs themselves; don't pickle an epoch's arrays (~100 MB on GRCh38).
        return {**self.__dict__, "_epochs": OrderedDict()}

    def epoch(self, genome_index: int, epoch: int) -> Windows:
        """One genome's epoch (the last few are kept: consecutive micro-batches mostly hit the same one)."""
        key = (genome_index, epoch)
        if key not in self._epochs:
            self._epochs[key] = epoch_windows(
                self.interval_sets[genome_index], self.rule, self.seed, genome_index, epoch,
                self.reverse_complement,
            )
            if len(self._epochs) > 2 * len(self.interval_sets):
                self._epochs.popitem(last=False)
        self._epochs.move_to_end(key)
        return self._epochs[key]

    def _epoch_size(self, genome_index: int, epoch: int) -> int:
        """Window count of an epoch without shuffling it: resuming far into the stream skips epochs this way."""
        if (genome_index, epoch) in self._epochs:
            return len(self._epochs[genome_index, epoch])
        rng = np.random.default_rng([self.seed, genome_index, epoch, _CUT])
        return len(cut_intervals(self.interval_sets[genome_index], self.rule, rng)[0])

    def windows(self, first: int, count: int) -> Windows:
        """The windows at stream positions [first, first + count), in stream order."""
        genome, index = self._genome_slots(first, count)
        return _grouped(genome, lambda genome_index, rows: self._genome_windows(genome_index, index[rows]))

    def _genome_windows(self, genome_index: int, index: np.ndarray) -> Windows:
        """Windows number `index` of one genome's own stream (its epochs back to back)."""
        starts = self._epoch_starts[genome_index]
        while starts[-1] <= index.max():
            starts.append(starts[-1] + self._epoch_size(genome_index, len(starts) - 1))
        epoch_of = np.searchsorted(starts, index, side="right") - 1
        return _grouped(
            epoch_of, lambda epoch, rows: self.epoch(genome_index, epoch).take(index[rows] - starts[epoch])
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
