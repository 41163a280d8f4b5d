"""Lightning data side: genomes -> infinite stream of collated micro-batches, sharded over ranks and workers.

Why it looks like this:
- What sits at stream position i is one question (`SequenceSource.read`); which positions this rank/worker
  serves, the resumable position and collation are another (`MicroBatchStream`). Another corpus plugs in by
  implementing `SequenceSource` alone; one that can be seen as contigs of A/C/G/T intervals (e.g. the rows of
  a `datasets` table, dnabert.data.sources) subclasses `WindowDataModule` and reuses the windows as well.
- Global micro-batch j holds stream positions [j*B, (j+1)*B); rank r serves j = r, r+W, ...; its rank-local
  micro-batch m is made by worker ((m - start) // G) % num_workers, G = batches_per_transfer (G = 1 gives the
  plain (m - start) % num_workers). torch's DataLoader takes from workers round-robin, so the rank sees
  m = start, start+1, ... in order, with no window twice and none skipped.
- Masking is not done here: it runs on the device (dnabert.data.masking), where the global step is known.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from dnabert.data.genome import Genome, GenomeSource, HeldOut
from dnabert.data.packing import pack_batch
from dnabert.data.tokenizers.kmer import kmer_ids_from_codes
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.data.windows import (
    EpochPlan,
    SequenceBatch,
    WindowRule,
    Windows,
    WindowStream,
    plan_units,
    read_windows,
)
from dnabert.errors import DnabertError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


class SequenceSource(Protocol):
    """What exists at each position of an infinite stream; `read` must be a pure function of its arguments
    (any process, any order), returning rows of valid codes (0..3) up to lengths[i] >= k."""

    def read(self, first: int, count: int) -> SequenceBatch: ...


class WindowTokenizer(Protocol):
    """A tokenizer other than the k-mers (`collate`): windows of codes -> the batch contract's rows, cut to
    `max_tokens` tokens ([CLS] and [SEP] included), with the same special ids (dnabert.data.tokenizers.bpe)."""

    vocab_size: int

    def collate(self, batch: SequenceBatch, max_tokens: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
        ...


Collate = Callable[[SequenceBatch], dict[str, torch.Tensor]]


class GenomeWindowSource:
    """Stream positions -> genome windows (WindowStream) -> nucleotide codes read from the FASTA files."""

    def __init__(self, genomes: list[Genome], stream: WindowStream) -> None:
        self.genomes = genomes
        self.stream = stream

    def read(self, first: int, count: int) -> SequenceBatch:
        return read_batch(self.genomes, self.stream.windows(first, count))


def read_batch(genomes: list[Genome], windows: Windows) -> SequenceBatch:
    codes, lengths = read_windows(genomes, windows)
    window = np.column_stack([windows.genome, windows.contig, windows.start, windows.start + lengths])
    if codes.size and codes.max() > 3:
        raise_changed_file(genomes, window[int(np.flatnonzero((codes > 3).any(axis=1))[0])])
    return SequenceBatch(codes, lengths, window.astype(np.int64))


def raise_changed_file(genomes: list[Genome], window: np.ndarray) -> None:
    """Windows lie inside intervals scanned as A/C/G/T at start: another base means the FASTA changed (or was
    damaged) since, which would otherwise become out-of-vocabulary ids, or silently wrong training."""
    genome_index, contig_index, start, end = map(int, window)
    genome = genomes[genome_index]
    files = ", ".join(str(path) for path in genome.source.fasta_paths)
    raise DnabertError(
        f"genome {genome.name!r} ({files}) now holds a base other than A/C/G/T in {genome.contig_names[contig_index]}"
        f":{start}-{end}, which was A/C/G/T when the run started: the file changed or was damaged during the run. "
        "Restore it and resume; a changed file is scanned anew at the next start."
    )


def collate(batch: SequenceBatch, k: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """`[CLS] k-mers [SEP] [PAD]...` rows, T = longest row rounded up to `pad_to_multiple_of` (tensor cores)."""
    n_kmers = batch.lengths - k + 1
    kmer_ids = kmer_ids_from_codes(batch.codes, k)
    width = int(n_kmers.max()) + 2
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(n_kmers), width), PAD_ID, dtype=np.int64)
    input_ids[:, 0] = CLS_ID
    columns = np.arange(kmer_ids.shape[1])
    input_ids[:, 1 : 1 + kmer_ids.shape[1]] = np.where(columns[None, :] < n_kmers[:, None], kmer_ids, PAD_ID)
    input_ids[np.arange(len(n_kmers)), n_kmers + 1] = SEP_ID
    return {"input_ids": torch.from_numpy(input_ids), "window": torch.from_numpy(batch.window)}


class MicroBatchStream(IterableDataset):
    """This rank's share of the stream as collated micro-batches; `position` = next rank-local micro-batch.

    Iterating yields transfer groups: `batches_per_transfer` consecutive micro-batches stacked into one set of
    tensors, because torch's worker-to-main transfer costs about a millisecond per tensor whatever its size
    (measured: ~350 micro-batches/s one by one vs ~2,200/s in groups of 8). PositionCountingLoader splits them.
    Group q (q = 0, 1, ...) holds micro-batches start + q*G ... start + q*G + G-1 and is made by worker
    q % num_workers; torch's round-robin over workers then returns them in stream order.
    With `pack_row_tokens`, each micro-batch's windows are packed into rows of that many tokens in the worker
    (dnabert.data.packing): fewer rows than windows, `window` still one entry per window.
    """

    def __init__(
        self,
        source: SequenceSource,
        k: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
        pad_to_multiple_of: int = 8,
        batches_per_transfer: int = 1,
        pack_row_tokens: int | None = None,
        collate_fn: Collate | None = None,
    ) -> None:
        if micro_batch_size < 1:
            raise DnabertError(f"data.micro_batch_size={micro_batch_size} must be at least 1.")
        if batches_per_transfer < 1:
            raise DnabertError(f"data.batches_per_transfer={batches_per_transfer} must be at least 1.")
        if not 0 <= rank < world_size:
            raise DnabertError(f"rank {rank} is outside world_size {world_size}.")
        self.source = source
        self.k = k
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self.pad_to_multiple_of = pad_to_multiple_of
        self.batches_per_transfer = batches_per_transfer
        self.pack_row_tokens = pack_row_tokens  # None: one window per row; else pack rows of this many tokens
        self.collate_fn = collate_fn  # None: overlapping k-mers (`collate`)

    def batch(self, local_index: int) -> dict[str, torch.Tensor]:
        """Rank-local micro-batch `local_index` (global micro-batch rank + world_size * local_index)."""
        global_index = self.rank + self.world_size * local_index
        batch = self.source.read(global_index * self.micro_batch_size, self.micro_batch_size)
        if self.collate_fn is None:
            collated = collate(batch, self.k, self.pad_to_multiple_of)
        else:
            collated = self.collate_fn(batch)
        if self.pack_row_tokens:
            return pack_batch(collated, self.pack_row_tokens, self.pad_to_multiple_of)
        return collated

    def group(self, first_local_index: int) -> dict[str, torch.Tensor]:
        """`batches_per_transfer` micro-batches from `first_local_index` on, padded to one width and stacked."""
        batches = [self.batch(first_local_index + i) for i in range(self.batches_per_transfer)]
        rows = [batch["input_ids"].shape[0] for batch in batches]  # fewer than micro_batch_size when packed
        widths = [batch["input_ids"].shape[1] for batch in batches]
        input_ids = torch.full((len(batches), self.micro_batch_size, max(widths)), PAD_ID, dtype=torch.long)
        for slot, batch in enumerate(batches):
            input_ids[slot, : rows[slot], : widths[slot]] = batch["input_ids"]
        return {
            "input_ids": input_ids,
            "window": torch.stack([batch["window"] for batch in batches]),
            "width": torch.tensor(widths),
            "rows": torch.tensor(rows),
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Reads self.position but never advances it: in a worker it is a copy; PositionCountingLoader counts
        # in the main process what was really handed out.
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        # Fixed at the start: without workers this runs in the main process, where the loader advances
        # self.position while the iteration is under way.
        start = self.position
        group_index = worker_id
        while True:
            yield self.group(start + group_index * self.batches_per_transfer)
            group_index += num_workers

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.position = int(state["position"])


def ignore_scheduler_signals(worker_id: int) -> None:
    """SLURM signals the whole process group; the trainer saves at the next step and stops, and its workers
    must live until then (by default SIGTERM ends a worker at once and the trainer fails mid-step)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class PositionCountingLoader(DataLoader):
    """DataLoader over a MicroBatchStream: splits transfer groups into micro-batches (the batch contract) and
    advances the stream's position as each reaches the caller, so `state_dict` is exact at any point."""

    dataset: MicroBatchStream

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for group in super().__iter__():
            for slot, (rows, width) in enumerate(zip(group["rows"].tolist(), group["width"].tolist(), strict=True)):
                batch = {"input_ids": group["input_ids"][slot, :rows, :width].contiguous(),
                         "window": group["window"][slot]}
                self.dataset.position += 1
                yield batch


class _ValidationBatches(Dataset):
    """This rank's fixed validation micro-batches (map-style: finite, and the same every call)."""

    def __init__(self, genomes: list[Genome], windows: Windows, micro_batch_size: int, k: int, multiple: int,
                 rank: int, world_size: int, collate_fn: Collate | None = None) -> None:
        self.genomes, self.windows, self.k, self.multiple = genomes, windows, k, multiple
        self.collate_fn = collate_fn
        self.micro_batch_size = micro_batch_size
        n_global = -(-len(windows) // micro_batch_size)
        # Equal counts on every rank when possible: a rank with an extra batch would wait alone in DDP syncs.
        n_used = n_global - n_global % world_size if n_global >= world_size else n_global
        self.global_indices = list(range(rank, n_used, world_size))

    def __len__(self) -> int:
        return len(self.global_indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        first = self.global_indices[index] * self.micro_batch_size
        windows = self.windows.take(slice(first, first + self.micro_batch_size))
        batch = read_batch(self.genomes, windows)
        return collate(batch, self.k, self.multiple) if self.collate_fn is None else self.collate_fn(batch)


def genome_sources(genomes: Sequence[GenomeSource | Mapping[str, Any]]) -> list[GenomeSource]:
    """Accept config dicts (Hydra/OmegaConf) or GenomeSource objects."""
    sources = []
    for genome in genomes:
        if isinstance(genome, GenomeSource):
            sources.append(genome)
            continue
        settings = dict(genome)
        try:
            sources.append(GenomeSource(**settings))
        except TypeError as err:
            raise DnabertError(
                f"data.genomes entry {settings} is not valid ({err}); each genome takes name, fasta, weight, "
                "include, exclude."
            ) from err
    names = [source.name for source in sources]
    if not sources or len(set(names)) != len(names):
        raise DnabertError(f"data.genomes must list at least one genome with distinct names, got {names}.")
    return sources


def check_pack_row_tokens(pack_rows: bool, pack_row_tokens: int | None, max_tokens: int) -> None:
    """A packed row must hold a full-length window (also checked up front, dnabert.run.validate)."""
    if pack_rows and pack_row_tokens is not None and pack_row_tokens < max_tokens:
        raise DnabertError(
            f"data.pack_row_tokens={pack_row_tokens} is below data.max_tokens={max_tokens}: a full-length window "
            "would not fit a row. Set it to at least max_tokens, or null (= max_tokens)."
        )


class WindowDataModule(L.LightningDataModule):
    """What every windowed corpus shares: the training stream, the validation set and the loaders.

    A subclass fills `self.genomes` in `setup` with objects that have `train_intervals`, `val_intervals` ((n, 3)
    rows (contig, start, end) of A/C/G/T only) and `gather_codes` (like `Genome`; a table's rows act as contigs,
    see dnabert.data.sources) and says in `stream_weights` how the stream mixes them; windows, sharding, resume and
    validation then work the same for every corpus.
    """

    # Validation keeps only full-length windows where any exist (comparable losses); a hint for an empty set.
    full_length_validation = True
    no_validation_hint = "set data.val_fraction > 0 or name data.val_contigs"

    def __init__(
        self,
        k: int,
        micro_batch_size: int,
        num_workers: int,
        seed: int,
        length_rule: str,
        max_tokens: int,
        val_max_windows: int,
        split_seed: int,
        reverse_complement: bool,
        pad_to_multiple_of: int,
        pin_memory: bool,
        batches_per_transfer: int,
        rank: int | None,
        world_size: int | None,
        start_position: int | None,
        pack_rows: bool = False,
        pack_row_tokens: int | None = None,
        tokenizer: WindowTokenizer | None = None,
        window_bp: int | None = None,
    ) -> None:
        super().__init__()
        if (tokenizer is None) != (window_bp is None):
            raise DnabertError(
                "data.window_bp (bp per window, cut to max_tokens after tokenising) goes with a BPE tokenizer: "
                f"set both or neither (data.tokenizer is {'set' if tokenizer else 'unset'}, "
                f"data.window_bp={window_bp})."
            )
        self.rule = WindowRule(k, max_tokens, length_rule, window_bp)
        self.tokenizer = tokenizer
        check_pack_row_tokens(pack_rows, pack_row_tokens, max_tokens)
        # None: one window per row; else rows packed with windows up to this many tokens (dnabert.data.packing)
        self.pack_row_tokens = (pack_row_tokens or max_tokens) if pack_rows else None
        self.k = k
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_max_windows = val_max_windows
        self.split_seed = split_seed
        self.reverse_complement = reverse_complement
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pin_memory = pin_memory
        self.batches_per_transfer = batches_per_transfer
        self.rank, self.world_size, self.start_position = rank, world_size, start_position
        self.genomes: list[Any] = []
        self.report = ""

    def stream_weights(self) -> list[float]:
        """Share of the training stream of each entry of `self.genomes`."""
        raise NotImplementedError

    def collate_fn(self) -> Collate | None:
        """The tokenizer's collation at this module's token budget; None: overlapping k-mers (`collate`)."""
        if self.tokenizer is None:
            return None
        return functools.partial(self.tokenizer.collate, max_tokens=self.rule.max_tokens,
                                 pad_to_multiple_of=self.pad_to_multiple_of)

    def windows_report(self) -> str:
        if self.tokenizer is not None:
            return (
                f"windows: up to {self.rule.max_nucleotides} nt, tokenised with {self.tokenizer} and cut to "
                f"{self.rule.max_tokens} tokens, length rule {self.rule.length_rule!r}, reverse complement "
                f"{'on' if self.reverse_complement else 'off'}"
            )
        return (
            f"windows: k={self.k}, up to {self.rule.max_nucleotides} nt ({self.rule.max_tokens} tokens), "
            f"length rule {self.rule.length_rule!r}, reverse complement {'on' if self.reverse_complement else 'off'}"
        )

    def _placement(self) -> tuple[int, int, int]:
        """(rank, world_size, rank-local start micro-batch): explicit settings win, else the attached trainer."""
        trainer = self.trainer
        rank = self.rank if self.rank is not None else (trainer.global_rank if trainer else 0)
        world = self.world_size if self.world_size is not None else (trainer.world_size if trainer else 1)
        if self.start_position is not None:
            start = self.start_position
        else:
            start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        return rank, world, start

    def window_source(self, rule: WindowRule | None = None) -> GenomeWindowSource:
        """The seeded training stream of windows (training split, mixed by weight); `rule` defaults to this
        module's. The BPE tokenizer is trained on the start of this stream."""
        self.setup()
        stream = WindowStream(
            [g.train_intervals for g in self.genomes],
            self.stream_weights(),
            rule or self.rule,
            self.seed,
            self.reverse_complement,
        )
        return GenomeWindowSource(self.genomes, stream)

    def train_stream(self) -> MicroBatchStream:
        source = self.window_source()
        rank, world, start = self._placement()
        source.stream.seek((rank + world * start) * self.micro_batch_size)  # epochs counted once, before workers start
        return MicroBatchStream(
            source, self.k, self.micro_batch_size, rank, world, start,
            self.pad_to_multiple_of, self.batches_per_transfer if self.num_workers > 0 else 1, self.pack_row_tokens,
            self.collate_fn(),
        )

    def train_dataloader(self) -> PositionCountingLoader:
        return PositionCountingLoader(
            self.train_stream(), batch_size=None, num_workers=self.num_workers, pin_memory=self._pin_memory,
            persistent_workers=False, worker_init_fn=ignore_scheduler_signals,
        )

    def validation_windows(self) -> Windows:
        """Windows of every entry's held-out split (seeded fixed cut), at most val_max_windows per entry; with
        `full_length_validation`, shorter ones only for an entry whose held-out stretches are all shorter than
        a window."""
        self.setup()
        rule = dataclasses.replace(self.rule, length_rule="fixed")
        parts = []
        for index, genome in enumerate(self.genomes):
            plan = EpochPlan(plan_units(genome.val_intervals), rule, self.split_seed, index, epoch=0)
            parts.append(self._first_validation_windows(plan))
        if not sum(map(len, parts)):
            raise DnabertError(
                f"no held-out validation data: {self.no_validation_hint} "
                "(or turn validation off with trainer.limit_val_batches=0)."
            )
        return Windows.concatenate(parts)

    def _first_validation_windows(self, plan: EpochPlan) -> Windows:
        """The plan's first val_max_windows windows (full-length ones where any exist), read group by group: a
        32 Gbp corpus holds out millions of windows, and only the first few thousand are used."""
        first, full = [], []
        n_first = n_full = 0
        for group in range(plan.n_groups):
            windows = plan.group(group)
            if n_first < self.val_max_windows:
                first.append(windows)
                n_first += len(windows)
            full.append(windows.take(windows.length == plan.rule.max_nucleotides))
            n_full += len(full[-1])
            if n_full >= self.val_max_windows:
                break
        chosen = full if self.full_length_validation and n_full else first
        return Windows.concatenate(chosen).take(slice(0, self.val_max_windows))

    def val_dataloader(self) -> DataLoader:
        rank, world, _ = self._placement()
        windows = self.validation_windows()  # runs setup, which fills self.genomes
        batches = _ValidationBatches(
            self.genomes, windows, self.micro_batch_size, self.k, self.pad_to_multiple_of, rank, world,
            self.collate_fn(),
        )
        # Read in the main process: a few thousand fixed windows cost milliseconds, and a worker forked anew at
        # every evaluation can deadlock in os.fork() (a thread ending during the fork), hanging DDP ranks.
        return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0, pin_memory=self._pin_memory)

    @property
    def _pin_memory(self) -> bool:
        """Pinning only helps a copy to a GPU; without one torch warns on every loader."""
        return self.pin_memory and torch.cuda.is_available()


class GenomeDataModule(WindowDataModule):
    """Training stream and held-out validation set from one or more genome FASTA files.

    genomes: GenomeSource objects or dicts (name, fasta, weight, include, exclude); k, max_tokens and
    length_rule ("original" | "fixed") fix the windows; val_fraction of each genome's bp (in seeded blocks of
    val_block_size bp) plus the named val_contigs are held out; val_max_windows caps the validation windows per
    genome; split_seed places the held-out blocks (apart from the training seed, so that runs with different
    seeds are evaluated on the same held-out set). batches_per_transfer micro-batches travel from a worker
    together (see MicroBatchStream). pack_rows packs each micro-batch's windows into rows of pack_row_tokens
    (default max_tokens) tokens (dnabert.data.packing; the model then needs packed=True); micro_batch_size still
    counts windows. tokenizer (a WindowTokenizer, e.g. dnabert.data.tokenizers.bpe.BpeWindowTokenizer) replaces
    the k-mers: windows are then up to window_bp bp, tokenised and cut to max_tokens; k only drops shorter ones.
    rank, world_size and start_position (rank-local micro-batch) default to the attached trainer's
    global_rank, world_size and global_step * accumulate_grad_batches.
    """

    def __init__(
        self,
        genomes: Sequence[GenomeSource | Mapping[str, Any]],
        k: int = 6,
        micro_batch_size: int = 10,
        num_workers: int = 2,
        seed: int = 0,
        length_rule: str = "original",
        max_tokens: int = 512,
        val_fraction: float = 0.01,
        val_block_size: int = 10_000,
        val_contigs: Sequence[str] = (),
        val_max_windows: int = 2000,
        split_seed: int = 0,
        reverse_complement: bool = False,
        cache_dir: str | Path | None = None,
        pad_to_multiple_of: int = 8,
        pin_memory: bool = torch.cuda.is_available(),
        batches_per_transfer: int = 8,
        rank: int | None = None,
        world_size: int | None = None,
        start_position: int | None = None,
        pack_rows: bool = False,
        pack_row_tokens: int | None = None,
        tokenizer: WindowTokenizer | None = None,
        window_bp: int | None = None,
    ) -> None:
        super().__init__(
            k, micro_batch_size, num_workers, seed, length_rule, max_tokens, val_max_windows, split_seed,
            reverse_complement, pad_to_multiple_of, pin_memory, batches_per_transfer, rank, world_size,
            start_position, pack_rows=pack_rows, pack_row_tokens=pack_row_tokens, tokenizer=tokenizer,
            window_bp=window_bp,
        )
        self.sources = genome_sources(genomes)
        self.val_fraction = val_fraction
        self.val_block_size = val_block_size
        self.val_contigs = list(val_contigs)
        self.cache_dir = cache_dir
        self.genomes: list[Genome] = []

    def prepare_data(self) -> None:
        """Build the .fai and interval caches once (Lightning runs this on one process per node before `setup`),
        so that DDP ranks never write the same index at the same time."""
        for source in self.sources:
            Genome.open(source, self.k, HeldOut(val_fraction=0.0), self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Open every genome once (interval caches, held-out split) and log what is used."""
        if self.genomes:
            return
        unmatched = set(self.val_contigs)
        for source in self.sources:
            genome = Genome.open(source, self.k, HeldOut(val_fraction=0.0), self.cache_dir)
            names = set(genome.contig_names)
            own_val_contigs = [name for name in self.val_contigs if name in names]
            genome.split(HeldOut(self.val_fraction, self.val_block_size, own_val_contigs, self.split_seed))
            unmatched -= names
            self.genomes.append(genome)
        if unmatched:
            raise DnabertError(
                f"val_contigs {sorted(unmatched)} are not selected contigs of any genome; fix val_contigs."
            )
        self.report = self._report()
        logger.info("%s", self.report)

    def _report(self) -> str:
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        shares = weights / weights.sum() if weights.sum() > 0 else weights
        lines = [genome.report() + f"\n  stream share {share:.1%} (weight {genome.source.weight})"
                 for genome, share in zip(self.genomes, shares, strict=True)]
        lines.append(self.windows_report())
        return "\n".join(lines)

    def stream_weights(self) -> list[float]:
        return [source.weight for source in self.sources]


def corpus_dataset(epoch: int = 0, split: str = "train", **settings: Any) -> datasets.IterableDataset:
    """The exact windows of one epoch (per genome, in training order) as a `datasets.IterableDataset`.

    Columns: sequence (upper case, reverse-complemented where training would), genome, contig, start, end.
    `settings` are GenomeDataModule's arguments.
    """
    import datasets

    if split not in ("train", "validation"):
        raise DnabertError(f"split={split!r} must be 'train' or 'validation'.")
    data = GenomeDataModule(**settings)
    data.setup()
    return datasets.IterableDataset.from_generator(
        _corpus_rows, gen_kwargs={"data": data, "epoch": epoch, "split": split}
    )


def _corpus_rows(data: GenomeDataModule, epoch: int, split: str) -> Iterator[dict[str, Any]]:
    letters = np.frombuffer(b"ATCG", dtype=np.uint8)
    if split == "validation":
        parts = [data.validation_windows()]
    else:  # group by group: a whole epoch of a large corpus does not fit in memory
        plans = [
            EpochPlan(plan_units(genome.train_intervals), data.rule, data.seed, index, epoch, data.reverse_complement)
            for index, genome in enumerate(data.genomes)
        ]
        parts = (plan.group(group) for plan in plans for group in range(plan.n_groups))
    for windows in parts:
        for first in range(0, len(windows), 1024):
            chunk = windows.take(slice(first, first + 1024))
            batch = read_batch(data.genomes, chunk)
            for codes, length, (genome, contig, start, end) in zip(
                batch.codes, batch.lengths, batch.window.tolist(), strict=True
            ):
                yield {
                    "sequence": letters[codes[:length]].tobytes().decode("ascii"),
                    "genome": data.genomes[genome].name,
                    "contig": data.genomes[genome].contig_names[contig],
                    "start": start,
                    "end": end,
                }
