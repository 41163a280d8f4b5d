"""Genome: contig selection, A/C/G/T intervals against a plain-Python parse, caches, held-out split, reads
(mmap fast path vs pyfaidx vs bgzip), the fork trap and every bad-input message."""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyfaidx
import pytest
import torch
from Bio import bgzf

from dnabert.data import genome as genome_module
from dnabert.data.genome import Genome, GenomeSource, HeldOut, held_out_split
from dnabert.data.tokenizers.kmer import encode_nucleotides
from dnabert.errors import DnabertError

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
    if bgzip:
        with bgzf.BgzfWriter(str(path), "wb") as handle:
            handle.write(text.encode())
    else:
        path.write_text(text)
    return path


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
