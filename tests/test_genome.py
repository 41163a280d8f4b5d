"""Genome: contig selection, A/C/G/T intervals against a plain-Python parse, caches, held-out split, reads
(mmap fast path vs pyfaidx vs bgzip), the fork trap and every bad-input message."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyfaidx
import pytest
import torch

from dnabert.data import genome as genome_module
from dnabert.data.genome import Genome, GenomeSource, HeldOut, held_out_split
from dnabert.data.tokenizers.kmer import encode_nucleotides
from dnabert.errors import DnabertError
from tests.conftest import write_text

DATA = Path(__file__).resolve().parents[1] / "data" / "genomes"


# ---------------------------------------------------------------- helpers shared with the other data tests
def random_contig(rng: np.random.Generator, length: int, n_runs: int = 3, iupac: int = 4) -> str:
    """Random sequence with N runs, single IUPAC letters and a lower-case (soft-masked) stretch."""
    letters = np.array(list("ACGT"))[rng.integers(0, 4, length)]
    for _ in range(n_runs):
        start = int(rng.integers(0, length - 50))
        letters[start : start + int(rng.integers(1, 50))] = "N"
    for position in rng.integers(0, length, iupac):
        letters[position] = rng.choice(list("RYKMSWn"))
    soft = int(rng.integers(0, length - 100))
    letters[soft : soft + 100] = np.char.lower(letters[soft : soft + 100])
    return "".join(letters)


def write_fasta(path: Path, records: dict[str, str], width: int = 60, bgzip: bool = False) -> Path:
    text = "".join(
        f">{name} description\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
        for name, seq in records.items()
    )
    return write_text(path, text, bgzip)


def parse_fasta(path: Path) -> dict[str, str]:
    """Independent plain-Python reader (no pyfaidx): name = first word of the header."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt") as handle:
        records: dict[str, list[str]] = {}
        for line in handle:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                name = line[1:].split()[0]
                records[name] = []
            elif line:
                records[name].append(line)
    return {name: "".join(parts) for name, parts in records.items()}


def acgt_runs(sequence: str, k: int) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer("[ACGTacgt]+", sequence) if m.end() - m.start() >= k]


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(1)
    records = {"ctgA": random_contig(rng, 20_000), "ctgB": random_contig(rng, 7_777), "ctgC": "ACGTN" * 3}
    return write_fasta(tmp_path / "synthetic.fa", records), records


def open_genome(fasta: Path, k: int = 6, tmp: Path | None = None, **source) -> Genome:
    cache = (tmp or fasta.parent) / "cache"
    return Genome.open(GenomeSource("g", fasta, **source), k, HeldOut(val_fraction=0.0), cache_dir=cache)


# ---------------------------------------------------------------- intervals and reads
def test_intervals_are_exactly_the_acgt_runs_of_at_least_k(synthetic):
    fasta, records = synthetic
    genome = open_genome(fasta, k=6)
    assert genome.contig_names == list(records)
    for index, name in enumerate(genome.contig_names):
        found = [(int(s), int(e)) for c, s, e in genome.intervals if c == index]
        assert found == acgt_runs(records[name], 6)
    sequence = "".join(records.values())
    report = genome.report()
    assert f"{sequence.upper().count('N'):,} bp N" in report
    iupac = sum(sequence.count(letter) for letter in "RYKMSW")
    assert f"{iupac:,} bp other IUPAC" in report
    assert "using all contigs" in report


def test_fast_reads_equal_python_parse_and_pyfaidx(synthetic):
    fasta, records = synthetic
    genome = open_genome(fasta)
    starts = np.array([0, 1, 59, 60, 61, 119, 5000, 19_900])
    codes = genome.read_codes(0, starts, 100)
    faidx = pyfaidx.Fasta(str(fasta))
    for row, start in enumerate(starts):
        expected = records["ctgA"][start : start + 100]
        assert np.array_equal(codes[row], encode_nucleotides(expected))
        assert np.array_equal(codes[row], encode_nucleotides(str(faidx["ctgA"][start : start + 100])))


def test_bgzip_reads_equal_plain_reads(tmp_path, synthetic):
    fasta, records = synthetic
    plain = open_genome(fasta)
    packed = open_genome(write_fasta(tmp_path / "synthetic.fa.gz", records, bgzip=True))
    assert packed.files[0].bgzip
    assert np.array_equal(plain.intervals, packed.intervals)
    contigs = np.array([0, 1, 0, 1])
    positions = np.array([[5, 6, 7, 300], [7000, 7001, 10, 11], [19_999, 0, 61, 60], [1, 2, 3, 4]])
    assert np.array_equal(plain.gather_codes(contigs, positions), packed.gather_codes(contigs, positions))


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")  # SAM spec 4.1.2
HTSLIB_BLOCK = 0xFF00  # htslib's bgzip: 65,280 input bytes per block; Biopython's BgzfWriter: 65,536


def write_bgzf_blocks(path: Path, data: bytes, block_size: int) -> Path:
    """BGZF written block by block as the SAM spec says: a gzip member per block_size input bytes, whose extra
    field 'BC' holds the block size - 1, then the empty EOF block."""
    with path.open("wb") as handle:
        for first in range(0, len(data), block_size):
            chunk = data[first : first + block_size]
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = deflate.compress(chunk) + deflate.flush()
            header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H2sHH", 6, b"BC", 2, len(body) + 25)
            handle.write(header + body + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
        handle.write(BGZF_EOF)
    return path


@pytest.mark.parametrize("writer", [
    "biopython", "htslib",
    pytest.param("bgzip", marks=pytest.mark.skipif(not shutil.which("bgzip"), reason="htslib's bgzip not installed")),
])
def test_bgzip_reads_at_every_block_boundary_equal_the_plain_twin(tmp_path, writer):
    """Biopython's writer fills blocks with exactly 65,536 bytes; pyfaidx's BGZF reader failed on a read starting
    at such a boundary (ValueError: within_block_offset ... got 65536)."""
    rng = np.random.default_rng(7)
    records = {"chrA": random_contig(rng, 150_000, n_runs=6), "chrB": random_contig(rng, 90_000), "chrC": "ACGT" * 500}
    plain_path = write_fasta(tmp_path / "plain.fa", records, width=61)
    if writer == "biopython":
        packed_path = write_fasta(tmp_path / "packed.fa.gz", records, width=61, bgzip=True)
        block_size = 65_536
    elif writer == "htslib":
        packed_path = write_bgzf_blocks(tmp_path / "packed.fa.gz", plain_path.read_bytes(), HTSLIB_BLOCK)
        block_size = HTSLIB_BLOCK
    else:  # the real tool, where installed (apt: tabix)
        packed_path = tmp_path / "packed.fa.gz"
        compressed = subprocess.run(["bgzip", "-c", str(plain_path)], capture_output=True, check=True).stdout
        packed_path.write_bytes(compressed)
        block_size = HTSLIB_BLOCK
    plain, packed = open_genome(plain_path), open_genome(packed_path)
    assert packed.files[0].bgzip and np.array_equal(plain.intervals, packed.intervals)
    assert f"decompressed copy {packed.files[0].plain}" in packed.report()
    contigs, positions = [], []
    boundaries = np.arange(block_size, plain_path.stat().st_size, block_size)
    assert len(boundaries) >= 3
    for index, contig in enumerate(plain.contigs):
        bases = np.arange(contig.length)
        byte_of_base = contig.offset + bases + bases // contig.line_bases * (contig.line_bytes - contig.line_bases)
        for boundary in boundaries:  # windows starting just before, at and after the boundary, and ending at it
            at = int(np.searchsorted(byte_of_base, boundary))
            for start in (at - 40, at - 1, at, at + 1):
                if start >= 0 and start + 40 <= contig.length and 0 < at < contig.length:
                    contigs.append(index)
                    positions.append(np.arange(start, start + 40))
    assert len(contigs) >= 4 * len(boundaries) - 4
    contigs_array, positions_array = np.array(contigs), np.stack(positions)
    codes = packed.gather_codes(contigs_array, positions_array)
    assert np.array_equal(codes, plain.gather_codes(contigs_array, positions_array))
    names = packed.contig_names
    expected = [encode_nucleotides(records[names[c]][p[0] : p[-1] + 1])
                for c, p in zip(contigs, positions, strict=True)]
    assert np.array_equal(codes, np.stack(expected))


def test_bgzip_copy_is_made_once_and_replaced_when_the_file_changes(tmp_path, synthetic, monkeypatch):
    fasta, records = synthetic
    packed_path = write_bgzf_blocks(tmp_path / "g.fa.gz", fasta.read_bytes(), 1000)
    first = open_genome(packed_path).files[0].plain
    copies = sorted(tmp_path.glob("g.fa.gz.dnabert-plain-*.fa"))
    assert copies == [first] and first.read_bytes() == fasta.read_bytes()
    monkeypatch.setattr(genome_module.shutil, "copyfileobj", lambda *_: pytest.fail("decompressed twice"))
    assert open_genome(packed_path).files[0].plain == first
    monkeypatch.undo()
    write_bgzf_blocks(packed_path, fasta.read_bytes().replace(b"ctgB", b"ctgZ"), 777)
    renamed = open_genome(packed_path)
    assert renamed.contig_names == ["ctgA", "ctgZ", "ctgC"]
    assert sorted(tmp_path.glob("g.fa.gz.dnabert-plain-*.fa")) == [renamed.files[0].plain] != [first]


def test_full_disk_while_decompressing_bgzip_says_where_and_what_to_do(tmp_path, synthetic, monkeypatch):
    fasta, _ = synthetic
    packed = write_bgzf_blocks(tmp_path / "g.fa.gz", fasta.read_bytes(), 4096)

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(genome_module.shutil, "copyfileobj", full_disk)
    with pytest.raises(DnabertError, match=r"decompressed copy of .*g.fa.gz.*No space left.*DNABERT_CACHE_DIR"):
        open_genome(packed)
    assert not list(tmp_path.glob("*dnabert-plain*"))  # no half-written copy left behind


def test_damaged_bgzip_names_the_file(tmp_path, synthetic):
    fasta, _ = synthetic
    packed = write_bgzf_blocks(tmp_path / "cut.fa.gz", fasta.read_bytes(), 4096)
    packed.write_bytes(packed.read_bytes()[:5000])
    with pytest.raises(DnabertError, match="cut.fa.gz is a damaged bgzip file"):
        open_genome(packed)
    assert not list(tmp_path.glob("*.tmp*"))


def test_demo_genomes_facts(tmp_path):
    for name in ("human_chr22_20-21M.fa", "lambda_NC_001416.1.fa", "human_chrM.fa.gz"):
        shutil.copy(DATA / name, tmp_path / name)
    chr22 = open_genome(tmp_path / "human_chr22_20-21M.fa")
    assert chr22.contig_names == ["22:20000001-21000000"]
    assert chr22.intervals.tolist() == [[0, 0, 509_431], [0, 609_431, 1_000_000]]
    assert "100,000 bp N" in chr22.report()
    lam = open_genome(tmp_path / "lambda_NC_001416.1.fa")
    assert lam.intervals.tolist() == [[0, 0, 48_502]]
    assert lam.read_codes(0, np.array([0]), 8).tolist() == [encode_nucleotides("GGGCGGCG").tolist()]
    chrm = open_genome(tmp_path / "human_chrM.fa.gz")
    assert chrm.files[0].bgzip and chrm.contig_names == ["MT_human"]
    assert chrm.intervals.tolist() == [[0, 0, 16_569]]
    assert chrm.read_codes(0, np.array([0]), 10).tolist() == [encode_nucleotides("GATCACAGGT").tolist()]


# ---------------------------------------------------------------- contig selection
def test_default_selection_is_primary_chromosomes_in_either_naming(tmp_path):
    rng = np.random.default_rng(0)
    records = {name: random_contig(rng, 500, n_runs=0) for name in ("chr2", "chrM", "chr1", "chrUn_x", "chrX")}
    genome = open_genome(write_fasta(tmp_path / "ucsc.fa", records))
    assert genome.contig_names == ["chr1", "chr2", "chrX"]
    assert "using all contigs" not in genome.report()
    records = {name: random_contig(rng, 500, n_runs=0) for name in ("MT", "1", "22", "KI270728.1")}
    assert open_genome(write_fasta(tmp_path / "ensembl.fa", records)).contig_names == ["1", "22"]
    excluded = open_genome(tmp_path / "ensembl.fa", exclude=["22"])
    assert excluded.contig_names == ["1"]
    included = open_genome(tmp_path / "ensembl.fa", include=["MT", "KI270728.1"])
    assert included.contig_names == ["MT", "KI270728.1"]


# ---------------------------------------------------------------- held-out split
def test_held_out_split_never_overlaps_and_is_seeded(synthetic):
    fasta, _ = synthetic
    genome = open_genome(fasta)
    train, val = held_out_split(genome.intervals, genome.contig_names, HeldOut(0.2, 1000, (), seed=3), 6, "g")
    again, val_again = held_out_split(genome.intervals, genome.contig_names, HeldOut(0.2, 1000, (), 3), 6, "g")
    other_train, other_val = held_out_split(genome.intervals, genome.contig_names, HeldOut(0.2, 1000, (), 4), 6, "g")
    assert np.array_equal(train, again) and np.array_equal(val, val_again)
    assert not np.array_equal(val, other_val)
    covered = {}
    for part, label in ((train, "train"), (val, "val")):
        for contig, start, end in part:
            for position in range(start, end):
                assert covered.setdefault((contig, position), label) == label, "train and val overlap"
    total = int(np.sum(genome.intervals[:, 2] - genome.intervals[:, 1]))
    val_bp = int(np.sum(val[:, 2] - val[:, 1]))
    assert 0.2 * total <= val_bp + 6 * len(val) <= 0.2 * total + 1000 + 6 * 30  # whole blocks, minus sub-k bits
    assert all(end - start >= 6 for part in (train, val) for _, start, end in part)


def test_a_genome_smaller_than_a_block_still_holds_out_about_val_fraction(synthetic):
    """ctgA+ctgB are 27.8 kbp: one 10 kbp block would hold out 36%; the block shrinks to the wanted 278 bp."""
    fasta, _ = synthetic
    genome = open_genome(fasta)
    total = int(np.sum(genome.intervals[:, 2] - genome.intervals[:, 1]))
    for seed in range(5):
        _, val = held_out_split(genome.intervals, genome.contig_names, HeldOut(0.01, 10_000, (), seed), 6, "g")
        val_bp = int(np.sum(val[:, 2] - val[:, 1]))
        assert 0 < val_bp <= 2 * 0.01 * total + 6


def test_val_contigs_go_to_validation_whole(synthetic):
    fasta, _ = synthetic
    genome = open_genome(fasta)
    train, val = held_out_split(genome.intervals, genome.contig_names, HeldOut(0.0, 1000, ["ctgB"]), 6, "g")
    assert set(val[:, 0]) == {1} and 1 not in set(train[:, 0])
    assert np.array_equal(val, genome.intervals[genome.intervals[:, 0] == 1])


# ---------------------------------------------------------------- caches
def test_interval_cache_reused_and_invalidated_when_file_changes(tmp_path, synthetic, monkeypatch):
    fasta, records = synthetic
    first = open_genome(fasta)
    calls = []
    real_scan = genome_module.scan_contig
    monkeypatch.setattr(genome_module, "scan_contig", lambda *a: calls.append(a) or real_scan(*a))
    second = open_genome(fasta)
    assert calls == [] and np.array_equal(first.intervals, second.intervals)
    records["ctgA"] = "N" * 100 + records["ctgA"][100:]
    write_fasta(fasta, records)
    os.utime(fasta, ns=(fasta.stat().st_atime_ns, fasta.stat().st_mtime_ns + 10**9))
    changed = open_genome(fasta)
    assert len(calls) == 3
    assert changed.intervals[0, 1] >= 100


def test_read_only_fasta_directory_uses_the_cache_dir(synthetic, tmp_path, monkeypatch):
    fasta, records = synthetic
    monkeypatch.setattr(genome_module, "_dir_is_writable", lambda directory: directory != fasta.parent)
    genome = open_genome(fasta, tmp=tmp_path / "elsewhere")
    assert sorted(p.name for p in fasta.parent.iterdir() if p.is_file()) == ["synthetic.fa"]
    written = sorted(p.suffix for p in (tmp_path / "elsewhere" / "cache").iterdir())
    assert written == [".fai", ".npz"]
    assert np.array_equal(genome.read_codes(0, np.array([0]), 50)[0], encode_nucleotides(records["ctgA"][:50]))


# ---------------------------------------------------------------- the fork trap
def _read_in_workers(genome: Genome, starts: np.ndarray, length: int) -> np.ndarray:
    class Reads(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(starts)

        def __getitem__(self, index: int) -> tuple[np.ndarray, bool]:
            codes = genome.read_codes(0, starts[index : index + 1], length)[0]
            return codes, genome.files[0]._pid == os.getpid()  # the handle in use was opened by this worker

    loader = torch.utils.data.DataLoader(Reads(), batch_size=None, num_workers=2, multiprocessing_context="fork")
    rows = list(loader)
    assert all(own_handle for _, own_handle in rows)
    return np.stack([np.asarray(codes) for codes, _ in rows])


@pytest.mark.parametrize("bgzip", [False, True])
def test_handles_opened_in_parent_are_reopened_in_forked_workers(tmp_path, synthetic, bgzip):
    fasta, records = synthetic
    if bgzip:
        fasta = write_fasta(tmp_path / "synthetic.fa.gz", records, bgzip=True)
    genome = open_genome(fasta)
    genome.read_codes(0, np.array([0]), 10)  # opens the mmap / pyfaidx handle in the parent
    parent_pid = os.getpid()
    starts = np.random.default_rng(0).integers(0, 19_000, 400)
    codes = _read_in_workers(genome, starts, 200)
    expected = np.stack([encode_nucleotides(records["ctgA"][s : s + 200]) for s in starts])
    assert np.array_equal(codes, expected)
    assert genome.files[0]._pid == parent_pid  # the parent's handle stayed the parent's


# ---------------------------------------------------------------- bad input
def test_missing_fasta(tmp_path):
    with pytest.raises(DnabertError, match="missing.fa.*does not exist"):
        open_genome(tmp_path / "missing.fa")


def test_plain_gzip_says_recompress_with_bgzip(tmp_path, synthetic):
    fasta, _ = synthetic
    packed = tmp_path / "plain.fa.gz"
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    with pytest.raises(DnabertError, match="plain.fa.gz.*re-compress with bgzip"):
        open_genome(packed)


def test_no_header(tmp_path):
    headless = tmp_path / "headless.fa"
    headless.write_text("ACGTACGT\nACGTACGT\n")
    with pytest.raises(DnabertError, match="headless.fa"):
        open_genome(headless)


def test_inconsistent_line_lengths(tmp_path):
    ragged = tmp_path / "ragged.fa"
    ragged.write_text(">a\nACGTACGTAC\nACGT\nACGTACGTAC\n")
    with pytest.raises(DnabertError, match="ragged.fa"):
        open_genome(ragged)


def test_stale_index_says_delete_the_fai(tmp_path, synthetic):
    fasta, records = synthetic
    open_genome(fasta)
    stamp = fasta.stat().st_mtime_ns
    write_fasta(fasta, {"ctg0": "ACGT" * 100, **records})  # a new first record shifts every offset
    os.utime(fasta, ns=(stamp, stamp - 10**9))  # older than the .fai: pyfaidx trusts the old index
    with pytest.raises(DnabertError, match=r"synthetic.fa.fai.*Delete"):
        open_genome(fasta)


def test_no_acgt_stretch_of_k(tmp_path):
    gappy = write_fasta(tmp_path / "gappy.fa", {"a": "ACGTNACGNNRRNNNN"})
    with pytest.raises(DnabertError, match="no A/C/G/T stretch of at least k=6"):
        open_genome(gappy)


def test_unknown_include_lists_existing_contigs(synthetic):
    fasta, _ = synthetic
    with pytest.raises(DnabertError, match=r"include.*chr1.*ctgA"):
        open_genome(fasta, include=["chr1"])


@pytest.mark.parametrize(
    ("held_out", "message"),
    [
        (HeldOut(val_fraction=1.0), "val_fraction=1.0"),
        (HeldOut(val_fraction=0.0, val_contigs=["ctgA", "ctgB", "ctgC"]), "leaves no training sequence"),
        (HeldOut(val_fraction=0.0, val_contigs=["chr9"]), "val_contigs"),
    ],
)
def test_empty_or_invalid_split(synthetic, held_out, message):
    fasta, _ = synthetic
    genome = open_genome(fasta)
    with pytest.raises(DnabertError, match=message):
        genome.split(held_out)
