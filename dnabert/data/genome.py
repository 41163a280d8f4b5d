"""A reference genome as the data path sees it: selected contigs, their A/C/G/T-only intervals, a held-out
split, and fast reads of many windows at once.

Why it looks like this:
- Scanning GRCh38 for N/IUPAC runs takes minutes, so the intervals are cached in an .npz beside the FASTA (or in
  `cache_dir` when that directory is read-only), keyed by the file's size/mtime and the contig selection.
- pyfaidx builds and validates the .fai; the hot path memory-maps the plain FASTA and gathers all bytes of a
  micro-batch with one fancy-index using the .fai offsets (pyfaidx per window would dominate the data path).
- A bgzip FASTA is decompressed once into a plain copy beside the interval cache (named in the start-up report)
  and read like any plain FASTA: random reads through pyfaidx's BGZF code cost a block inflate per window and
  failed on valid files whose blocks hold exactly 65,536 bytes (Biopython's writer; pyfaidx #125, #131, #238).
- The scan reads the file in bounded chunks with ordinary reads, not through the mmap, so its peak RSS does not
  grow with the genome (mapped pages would count as the process's own).
- The mmap is opened lazily per process id: handles opened in the parent and inherited by
  forked dataloader workers share a file offset and return wrong sequence.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import pyfaidx

from dnabert.data.tokenizers.kmer import INVALID_CODE, encode_nucleotides
from dnabert.errors import DnabertError

logger = logging.getLogger(__name__)

PRIMARY_CHROMOSOMES = tuple(f"{n}" for n in range(1, 23)) + ("X", "Y")
_SCAN_CHUNK = 1 << 23  # bytes of sequence scanned at once: bounded memory on 250 Mbp chromosomes
_CACHE_VERSION = 1  # bump when the cached interval format or the scan changes


def default_cache_dir() -> Path:
    """Where indexes go when the FASTA's directory is read-only: $DNABERT_CACHE_DIR, else ~/.cache/dnabert."""
    if os.environ.get("DNABERT_CACHE_DIR"):
        return Path(os.environ["DNABERT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dnabert"


@dataclass(frozen=True)
class GenomeSource:
    """One genome of the corpus: a name, its FASTA file(s), its sampling weight and an optional contig choice."""

    name: str
    fasta: str | Path | Sequence[str | Path]
    weight: float = 1.0
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None

    @property
    def fasta_paths(self) -> list[Path]:
        paths = [self.fasta] if isinstance(self.fasta, (str, Path)) else list(self.fasta)
        return [Path(path).expanduser() for path in paths]


@dataclass(frozen=True)
class HeldOut:
    """Held-out (validation) split settings; the same seed always holds out the same regions."""

    val_fraction: float = 0.01
    val_block_size: int = 10_000
    val_contigs: Sequence[str] = ()
    seed: int = 0


@dataclass
class _Contig:
    name: str
    length: int
    file_index: int
    offset: int  # byte offset of the first base in the plain FASTA (a bgzip file's decompressed copy)
    line_bases: int
    line_bytes: int


def _dir_is_writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _index_dir(fasta: Path, cache_dir: Path) -> Path:
    """Beside the FASTA when possible (users find it and it moves with the file), else the cache dir."""
    if _dir_is_writable(fasta.parent):
        return fasta.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def _path_tag(path: Path) -> str:
    """Short tag of an absolute path, so files of the same name in different places don't share a cache."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


class _FastaFile:
    """One FASTA file: its .fai records and lazily opened, per-process readers."""

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.path = path
        if path.is_dir():
            raise DnabertError(f"FASTA file {path} is a directory; point the genome's `fasta` at a file inside it.")
        if not path.is_file():
            raise DnabertError(f"FASTA file {path} does not exist; check the genome's `fasta` setting.")
        if not os.access(path, os.R_OK):
            raise DnabertError(f"FASTA file {path} is not readable; fix its permissions.")
        self.bgzip = is_gzip(path)
        index_dir = _index_dir(path, cache_dir)
        # What is read: the file itself, or the plain copy of a bgzip file (whose .fai sits beside the copy).
        self.plain = _decompressed_copy(path, index_dir) if self.bgzip else path
        beside = self.plain.with_name(self.plain.name + ".fai")
        if self.bgzip or index_dir == path.parent or beside.exists() and beside.stat().st_mtime >= path.stat().st_mtime:
            self.fai = beside
        else:
            self.fai = index_dir / f"{path.name}.{_path_tag(path)}.fai"
        self._pid: int | None = None
        self._memmap: np.memmap | None = None
        faidx = self._open_faidx()
        records = faidx.index
        faidx.close()
        if not records:
            raise DnabertError(
                f"FASTA file {path} has no '>' header line; it is not a FASTA file (or is empty)."
            )
        self.records = {name: (rec.rlen, rec.offset, rec.lenc, rec.lenb) for name, rec in records.items()}
        self._check_index_matches_file()

    def _open_faidx(self) -> pyfaidx.Faidx:
        try:
            return pyfaidx.Faidx(str(self.plain), indexname=str(self.fai), as_raw=True)
        except pyfaidx.FastaIndexingError as err:
            raise DnabertError(
                f"FASTA file {self.path} is malformed ({err}); every record needs a '>' header and lines of "
                "equal length (except the last of each record): reformat it, e.g. `samtools faidx` rejects it too."
            ) from err
        except UnicodeDecodeError as err:
            raise DnabertError(
                f"FASTA file {self.path} is not text (byte {err.start} of a line is not ASCII); point `fasta` at a "
                "FASTA file (plain, or compressed with bgzip)."
            ) from err
        except ValueError as err:  # pyfaidx's duplicate_action="stop": 'Duplicate key "name"'
            if "Duplicate key" not in str(err):
                raise
            raise DnabertError(
                f"FASTA file {self.path} has two records named {str(err).split(' ', 2)[2]} (the first word of the "
                "'>' line names a record); rename one, e.g. `seqkit rename`, or remove the copy."
            ) from err
        except OSError as err:
            raise DnabertError(f"cannot read FASTA file {self.path} or write its index {self.fai}: {err}") from err

    def _check_index_matches_file(self) -> None:
        """A .fai newer than its FASTA is trusted by pyfaidx even if the FASTA was replaced (copied with its
        old mtime, edited in place): check that the sequence lines sit where the .fai says."""
        data = self.memmap()
        size = data.shape[0]
        for name, (length, offset, line_bases, line_bytes) in self.records.items():
            if length == 0:  # an empty record has no sequence line to check
                continue
            last = offset + (length - 1) // line_bases * line_bytes + (length - 1) % line_bases
            line_end = offset + line_bases
            ok = (
                last < size
                and int(data[offset - 1]) == ord("\n")
                and int(data[offset]) not in b"\n\r>"
                and int(data[last]) not in b"\n\r>"
                and (last + 1 == size or int(data[last + 1]) in b"\n\r")
                and (length <= line_bases or int(data[line_end]) in b"\n\r")
            )
            if not ok:
                raise DnabertError(
                    f"the FASTA index {self.fai} does not match {self.path} (record {name!r}): the FASTA changed "
                    f"after it was indexed, or its lines have unequal lengths. Delete {self.fai} and run again."
                )

    def _reopen_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._memmap = None
            self._pid = os.getpid()

    def memmap(self) -> np.memmap:
        self._reopen_if_forked()
        if self._memmap is None:
            self._memmap = np.memmap(self.plain, dtype=np.uint8, mode="r")
        return self._memmap

    def read(self, first: int, end: int) -> np.ndarray:
        """Bytes [first, end) by an ordinary read: unlike the mmap, they do not stay in this process's RSS."""
        with self.plain.open("rb") as handle:
            handle.seek(first)
            return np.frombuffer(handle.read(end - first), dtype=np.uint8)

    def __getstate__(self) -> dict:
        # Spawned workers get a pickled copy: never ship open handles.
        return {**self.__dict__, "_pid": None, "_memmap": None}


def is_gzip(path: Path) -> bool:
    """gzip or bgzip by the file's magic bytes, not its name."""
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def open_text(path: Path, errors: str = "strict") -> TextIO:
    """A text handle on a plain, gzip or bgzip file (gzip reads BGZF too: a series of gzip members)."""
    return gzip.open(path, "rt", encoding="utf-8", errors=errors) if is_gzip(path) else path.open(
        encoding="utf-8", errors=errors)


def _is_bgzf(path: Path) -> bool:
    """BGZF (SAM spec 4.1): a gzip member with FEXTRA whose first subfield is 'BC' (the block size)."""
    with path.open("rb") as handle:
        header = handle.read(16)
    return len(header) == 16 and header[3] & 4 != 0 and header[12:14] == b"BC"


def _decompressed_copy(path: Path, directory: Path) -> Path:
    """The plain copy of a bgzip FASTA in `directory`, made once (keyed by the file's size and mtime, stale copies
    removed); decompressed with zlib as a whole stream, so any valid BGZF reads the same whoever wrote it."""
    if not _is_bgzf(path):
        raise DnabertError(
            f"FASTA file {path} is gzip-compressed but not with bgzip, so it cannot be read at random "
            f"positions; re-compress with bgzip (`zcat {path.name} | bgzip > new.fa.gz`) or decompress it."
        )
    stat = path.stat()
    tag = "" if directory == path.parent else f".{_path_tag(path)}"
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = f"{path.name}{tag}.dnabert-plain-"
    copy = directory / f"{stem}{key}.fa"
    if copy.exists():
        return copy
    for stale in directory.glob(f"{stem}*"):
        if key not in stale.name:  # a copy of an older version of the file (a concurrent writer has our key)
            stale.unlink(missing_ok=True)
    logger.warning("decompressing the bgzip FASTA %s once into %s (a plain copy for fast random reads)", path, copy)
    temporary = copy.with_name(copy.name + f".tmp{os.getpid()}")
    try:
        with gzip.open(path, "rb") as source, temporary.open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 24)
        temporary.replace(copy)  # atomic: a concurrent rank never reads half a copy
        logger.warning("wrote %s (%.2f GB); later runs reuse it, delete it to reclaim the space", copy,
                       copy.stat().st_size / 1e9)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        temporary.unlink(missing_ok=True)
        raise DnabertError(
            f"FASTA file {path} is a damaged bgzip file ({err}); download it again or re-compress the plain FASTA "
            "with bgzip."
        ) from err
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise DnabertError(
            f"cannot write the decompressed copy of {path} to {copy} ({err}); free space there, point "
            "DNABERT_CACHE_DIR (data.cache_dir) at a disk with room, or give a decompressed FASTA."
        ) from err
    return copy


@dataclass
class ContigStats:
    """What the scan found in one contig; used for the start-up report."""

    length: int
    acgt: int
    n: int
    iupac: int


@dataclass
class Genome:
    """Selected contigs of one genome, their A/C/G/T-only intervals and the held-out split."""

    source: GenomeSource
    k: int
    contigs: list[_Contig]
    files: list[_FastaFile]
    stats: list[ContigStats]
    intervals: np.ndarray  # (n, 3) int64 (contig_index, start, end): every A/C/G/T run of at least k bp
    train_intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    val_intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    selection_note: str = ""

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def contig_names(self) -> list[str]:
        return [contig.name for contig in self.contigs]

    @classmethod
    def open(
        cls,
        source: GenomeSource,
        k: int,
        held_out: HeldOut | None = None,
        cache_dir: str | Path | None = None,
        rescan: bool = False,
    ) -> Genome:
        """Validate the FASTA file(s), load or build the interval cache and split off the held-out regions."""
        cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        paths = source.fasta_paths
        if not paths:
            raise DnabertError(f"genome {source.name!r} has no `fasta` file; set fasta to a path.")
        files = [_FastaFile(path, cache_dir) for path in paths]
        all_contigs = _contigs_of(files, source.name)
        selected, note = _select_contigs(all_contigs, source)
        contigs = [all_contigs[name] for name in selected]
        intervals, stats = _load_or_scan(files, contigs, cache_dir, rescan)
        long_enough = intervals[:, 2] - intervals[:, 1] >= k
        if not long_enough.any():
            raise DnabertError(
                f"genome {source.name!r} ({', '.join(map(str, paths))}) has no A/C/G/T stretch of at least "
                f"k={k} bp in the selected contigs; check the file and the include/exclude settings."
            )
        genome = cls(source, k, contigs, files, stats, intervals[long_enough], selection_note=note)
        genome.split(held_out or HeldOut())
        return genome

    def split(self, held_out: HeldOut) -> None:
        """Set train/val intervals: whole `val_contigs` plus seeded blocks holding `val_fraction` of the bp."""
        self.train_intervals, self.val_intervals = held_out_split(
            self.intervals, self.contig_names, held_out, self.k, self.name
        )

    def read_codes(self, contig_index: int, starts: np.ndarray, length: int) -> np.ndarray:
        """Nucleotide codes (n, length) of equal-length stretches [start, start+length) of one contig."""
        starts = np.asarray(starts, dtype=np.int64)
        positions = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
        return self.gather_codes(np.full(len(starts), contig_index), positions)

    def gather_codes(self, contig_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Codes at `positions` (n, L) of contigs `contig_index` (n,): one fancy-index per FASTA file."""
        contig_index = np.asarray(contig_index, dtype=np.int64)
        codes = np.empty(positions.shape, dtype=np.uint8)
        file_of_row = self._layout[3, contig_index]
        for file_index in np.unique(file_of_row):
            rows = np.flatnonzero(file_of_row == file_index)
            offset, line_bases, line_bytes = self._layout[:3, contig_index[rows]]
            rows_positions = positions[rows]
            byte = (
                offset[:, None]
                + rows_positions
                + rows_positions // line_bases[:, None] * (line_bytes - line_bases)[:, None]
            )
            codes[rows] = encode_nucleotides(self.files[file_index].memmap()[byte])
        return codes

    @property
    def _layout(self) -> np.ndarray:
        """(4, n_contigs) int64: byte offset, bases per line, bytes per line, file index (vectorised gather)."""
        if not hasattr(self, "_layout_cache"):
            self._layout_cache = np.array(
                [[c.offset, c.line_bases, c.line_bytes, c.file_index] for c in self.contigs], dtype=np.int64
            ).T.reshape(4, -1)
        return self._layout_cache

    def report(self) -> str:
        """What was kept: contigs, bp used for train/val, bp dropped as N, other IUPAC letters or short runs."""
        total = sum(s.length for s in self.stats)
        n_bp = sum(s.n for s in self.stats)
        iupac = sum(s.iupac for s in self.stats)
        used = int(np.sum(self.intervals[:, 2] - self.intervals[:, 1]))
        short = sum(s.acgt for s in self.stats) - used
        train = int(np.sum(self.train_intervals[:, 2] - self.train_intervals[:, 1]))
        val = int(np.sum(self.val_intervals[:, 2] - self.val_intervals[:, 1]))
        names = self.contig_names
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} contigs)" if len(names) > 6 else "")
        lines = [
            f"genome {self.name!r}: {len(names)} contigs [{shown}], {total:,} bp",
            f"  used {used:,} bp A/C/G/T in {len(self.intervals):,} intervals: train {train:,} bp, "
            f"held-out {val:,} bp",
            f"  dropped {n_bp:,} bp N, {iupac:,} bp other IUPAC/non-ACGT, {short:,} bp in A/C/G/T runs "
            f"shorter than k={self.k}",
        ]
        if self.selection_note:
            lines.append(f"  {self.selection_note}")
        for fasta in self.files:
            if fasta.bgzip:
                lines.append(f"  {fasta.path.name} is bgzip-compressed: read from its decompressed copy {fasta.plain} "
                             f"({fasta.plain.stat().st_size / 1e9:.2f} GB; delete it to reclaim the space)")
        return "\n".join(lines)


class Reference:
    """A whole FASTA read by contig name and position, without the interval scan or the contig choice of `Genome`:
    what variant scoring needs (any contig a VCF names). Plain or bgzip, checked and indexed as `Genome` does."""

    def __init__(self, fasta: str | Path, cache_dir: str | Path | None = None) -> None:
        path = Path(fasta).expanduser()
        self._file = _FastaFile(path, Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
        self._contigs = _contigs_of([self._file], path.name)
        self.path = path
        self.lengths = {name: contig.length for name, contig in self._contigs.items()}  # in file order

    def codes(self, contig: str, start: int, end: int) -> np.ndarray:
        """Nucleotide codes (uint8, INVALID_CODE for N and other letters) of [start, end) of one contig."""
        if end <= start:
            return np.zeros(0, dtype=np.uint8)
        return encode_nucleotides(_read_stretch(self._file, self._contigs[contig], start, end - start))


def _contigs_of(files: list[_FastaFile], genome_name: str) -> dict[str, _Contig]:
    contigs: dict[str, _Contig] = {}
    for file_index, fasta in enumerate(files):
        for name, (length, offset, line_bases, line_bytes) in fasta.records.items():
            if name in contigs:
                raise DnabertError(
                    f"contig {name!r} of genome {genome_name!r} appears in more than one FASTA file "
                    f"({fasta.path}); give each genome's files distinct contig names."
                )
            contigs[name] = _Contig(name, length, file_index, offset, max(line_bases, 1), max(line_bytes, 1))
    return contigs


def _select_contigs(contigs: dict[str, _Contig], source: GenomeSource) -> tuple[list[str], str]:
    """Default: GRCh38 primary chromosomes (chr1..22, X, Y or 1..22, X, Y), else every contig (with a note)."""
    names = list(contigs)
    note = ""
    for setting, requested in (("include", source.include), ("exclude", source.exclude)):
        unknown = [name for name in requested or () if name not in contigs]
        if unknown:
            raise DnabertError(
                f"genome {source.name!r}: {setting} names contig(s) {unknown[:5]} that are not in "
                f"{', '.join(str(f) for f in source.fasta_paths)}; contigs there include {names[:8]}."
            )
    if source.include:
        selected = list(source.include)
    else:
        primary = [name for prefix in ("chr", "") for name in (prefix + p for p in PRIMARY_CHROMOSOMES)]
        selected = [name for name in primary if name in contigs]
        if not selected:
            selected = names
            note = "no GRCh38 primary chromosome names (chr1..chr22, chrX, chrY) found: using all contigs"
    excluded = set(source.exclude or ())
    selected = [name for name in selected if name not in excluded]
    if not selected:
        raise DnabertError(f"genome {source.name!r}: include/exclude leave no contig; loosen `exclude`.")
    return selected, note


def _cache_path(files: list[_FastaFile], contigs: list[_Contig], cache_dir: Path) -> Path:
    identity = {
        "version": _CACHE_VERSION,
        "files": [(f.path.name, f.path.stat().st_size, f.path.stat().st_mtime_ns) for f in files],
        "contigs": [c.name for c in contigs],
    }
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    first = files[0].path
    directory = _index_dir(first, cache_dir)
    tag = "" if directory == first.parent else f".{_path_tag(first)}"
    return directory / f"{first.name}{tag}.dnabert-intervals-{key}.npz"


def _load_or_scan(
    files: list[_FastaFile], contigs: list[_Contig], cache_dir: Path, rescan: bool
) -> tuple[np.ndarray, list[ContigStats]]:
    path = _cache_path(files, contigs, cache_dir)
    if path.exists() and not rescan:
        with np.load(path) as cached:
            logger.debug("interval index loaded from %s", path)
            return cached["intervals"], [ContigStats(*map(int, row)) for row in cached["stats"]]
    interval_parts, stats = [], []
    for contig_index, contig in enumerate(contigs):
        starts, ends, contig_stats = scan_contig(files[contig.file_index], contig)
        interval_parts.append(np.column_stack([np.full(len(starts), contig_index), starts, ends]))
        stats.append(contig_stats)
    intervals = np.concatenate(interval_parts).astype(np.int64).reshape(-1, 3)
    stats_array = np.array([[s.length, s.acgt, s.n, s.iupac] for s in stats], dtype=np.int64)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            np.savez(handle, intervals=intervals, stats=stats_array)
        temporary.replace(path)  # atomic: concurrent ranks never read half a file
        logger.info("interval index written to %s", path)
    except OSError as err:
        logger.warning("could not write the interval cache %s (%s); the next start scans again", path, err)
    return intervals, stats


def scan_contig(fasta: _FastaFile, contig: _Contig) -> tuple[np.ndarray, np.ndarray, ContigStats]:
    """A/C/G/T runs [start, end) of one contig and its base counts, scanned in bounded-memory chunks."""
    starts, ends = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    n_count = invalid_count = 0
    for chunk_start in range(0, contig.length, _SCAN_CHUNK):
        raw = _read_stretch(fasta, contig, chunk_start, min(_SCAN_CHUNK, contig.length - chunk_start))
        valid = encode_nucleotides(raw) != INVALID_CODE
        invalid_count += int(valid.size - np.count_nonzero(valid))
        n_count += int(np.count_nonzero((raw == ord("N")) | (raw == ord("n"))))
        padded = np.concatenate([[False], valid, [False]])  # bool throughout: 1 byte per base of the chunk
        starts.append(np.flatnonzero(padded[1:] & ~padded[:-1]) + chunk_start)
        ends.append(np.flatnonzero(padded[:-1] & ~padded[1:]) + chunk_start)
    run_starts, run_ends = _merge_touching(np.concatenate(starts), np.concatenate(ends))
    acgt = int(np.sum(run_ends - run_starts))
    return run_starts, run_ends, ContigStats(contig.length, acgt, n_count, invalid_count - n_count)


def _read_stretch(fasta: _FastaFile, contig: _Contig, start: int, length: int) -> np.ndarray:
    """Raw sequence bytes of one stretch (newlines removed)."""
    first = contig.offset + start // contig.line_bases * contig.line_bytes + start % contig.line_bases
    end = start + length - 1
    last = contig.offset + end // contig.line_bases * contig.line_bytes + end % contig.line_bases
    raw = fasta.read(first, last + 1)
    return raw[(raw != ord("\n")) & (raw != ord("\r"))]


def _merge_touching(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted half-open intervals where one ends exactly where the next starts (chunk borders)."""
    if starts.size == 0:
        return starts.astype(np.int64), ends.astype(np.int64)
    new_run = np.ones(starts.size, dtype=bool)
    new_run[1:] = starts[1:] != ends[:-1]
    first = np.flatnonzero(new_run)
    last = np.append(first[1:], starts.size) - 1
    return starts[first].astype(np.int64), ends[last].astype(np.int64)


def held_out_split(
    intervals: np.ndarray, contig_names: list[str], held_out: HeldOut, k: int, genome_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split intervals into (train, val) that never overlap.

    `val_contigs` go to val whole; of the rest, a seeded random set of `val_block_size` blocks (aligned on each
    contig) holding at least `val_fraction` of the A/C/G/T bp goes to val. Pieces shorter than k are dropped.
    In a genome too small for one block (a virus, a mitochondrion), the block shrinks to the wanted bp, so the
    held-out share stays near val_fraction instead of one block taking half the genome.
    """
    if not 0.0 <= held_out.val_fraction < 1.0:
        raise DnabertError(
            f"val_fraction={held_out.val_fraction} must be in [0, 1): it is the share of bp held out for "
            "validation (1 would leave nothing to train on)."
        )
    if held_out.val_block_size < 1:
        raise DnabertError(f"data.val_block_size={held_out.val_block_size} must be a positive number of bp.")
    unknown = [name for name in held_out.val_contigs if name not in contig_names]
    if unknown:
        raise DnabertError(
            f"genome {genome_name!r}: val_contigs {unknown[:5]} are not among its selected contigs "
            f"{contig_names[:8]}; fix val_contigs."
        )
    val_contig_indices = [contig_names.index(name) for name in held_out.val_contigs]
    whole_val = np.isin(intervals[:, 0], val_contig_indices)
    candidates = intervals[~whole_val]
    wanted = held_out.val_fraction * int(np.sum(candidates[:, 2] - candidates[:, 1]))
    block_size = min(held_out.val_block_size, max(math.ceil(wanted), k)) if wanted else held_out.val_block_size
    pieces, block_keys = _cut_at_blocks(candidates, block_size)
    piece_bp = pieces[:, 2] - pieces[:, 1]
    unique_blocks, block_of_piece = np.unique(block_keys, return_inverse=True)
    block_bp = np.bincount(block_of_piece, weights=piece_bp, minlength=len(unique_blocks))
    rng = np.random.default_rng(np.random.SeedSequence([held_out.seed, 0x5EED_0A11]))
    order = rng.permutation(len(unique_blocks))
    n_val_blocks = int(np.searchsorted(np.cumsum(block_bp[order]), wanted)) + 1 if wanted > 0 else 0
    is_val_block = np.zeros(len(unique_blocks), dtype=bool)
    is_val_block[order[:n_val_blocks]] = True
    is_val_piece = is_val_block[block_of_piece]
    train = _drop_short(_merge_pieces(pieces[~is_val_piece]), k)
    val = _drop_short(np.concatenate([intervals[whole_val], _merge_pieces(pieces[is_val_piece])]), k)
    val = val[np.lexsort((val[:, 1], val[:, 0]))]
    if len(train) == 0:
        raise DnabertError(
            f"genome {genome_name!r}: the held-out split (val_fraction={held_out.val_fraction}, "
            f"val_contigs={list(held_out.val_contigs)}) leaves no training sequence; hold out less."
        )
    if len(val) == 0 and (held_out.val_fraction > 0 or held_out.val_contigs):
        raise DnabertError(
            f"genome {genome_name!r}: the held-out split (val_fraction={held_out.val_fraction}, "
            f"val_block_size={block_size}) has no A/C/G/T stretch of k={k} bp; raise them."
        )
    return train, val


def _cut_at_blocks(intervals: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut intervals at multiples of block_size; returns pieces (n, 3) and a unique key per (contig, block)."""
    first_block = intervals[:, 1] // block_size
    last_block = (intervals[:, 2] - 1) // block_size
    counts = last_block - first_block + 1
    parent = np.repeat(np.arange(len(intervals)), counts)
    block = first_block[parent] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = np.maximum(intervals[parent, 1], block * block_size)
    ends = np.minimum(intervals[parent, 2], (block + 1) * block_size)
    pieces = np.column_stack([intervals[parent, 0], starts, ends]).astype(np.int64).reshape(-1, 3)
    keys = intervals[parent, 0] * (1 << 40) + block
    return pieces, keys


def _merge_pieces(pieces: np.ndarray) -> np.ndarray:
    """Merge consecutive pieces of the same contig that touch (undo block cuts inside one split)."""
    if len(pieces) == 0:
        return pieces.reshape(0, 3)
    new_run = np.ones(len(pieces), dtype=bool)
    new_run[1:] = (pieces[1:, 0] != pieces[:-1, 0]) | (pieces[1:, 1] != pieces[:-1, 2])
    first = np.flatnonzero(new_run)
    last = np.append(first[1:], len(pieces)) - 1
    return np.column_stack([pieces[first, 0], pieces[first, 1], pieces[last, 2]])


def _drop_short(intervals: np.ndarray, k: int) -> np.ndarray:
    return intervals[intervals[:, 2] - intervals[:, 1] >= k].reshape(-1, 3).astype(np.int64)
