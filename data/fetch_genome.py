"""Fetch a reference genome, verify it, make it random-access, index it and report what is in it.

    python data/fetch_genome.py grch38 --out /data/genomes            # NCBI GRCh38 analysis set (md5)
    python data/fetch_genome.py grch38 --source ensembl --out DIR     # Ensembl primary assembly (BSD sum)
    python data/fetch_genome.py url <URL or local path> --md5 HASH --out DIR --name NAME

Why each step:
- The checksum comes from the file the provider publishes beside the genome (NCBI md5checksums.txt, Ensembl
  CHECKSUMS), downloaded first, so a truncated or corrupt download is refused before anything uses it.
- A plain .gz is decompressed to a plain .fa (not re-compressed with bgzip): the training reader memory-maps
  plain FASTA using the .fai offsets, which is the fast path; bgzip would go through pyfaidx per window. GRCh38
  takes about 3.1 GB uncompressed.
- The .fai (pyfaidx) and the interval cache (dnabert.data.genome) are built here once, so training starts at once.
- Downloads resume from a `.part` file after an interruption; nothing is moved to its final name unverified.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python data/fetch_genome.py` from a clone that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from dnabert.errors import DnabertError, command_line  # noqa: E402

CHUNK_BYTES = 1 << 20
NETWORK_TIMEOUT_S = 30
HASH_ALGORITHMS = ("md5", "sha256")
BSD_SUM = "bsd-sum"  # Ensembl's CHECKSUMS: `sum` (BSD algorithm, 1 KiB blocks): "checksum blocks name"


@dataclass(frozen=True)
class KnownSource:
    """A genome published with a checksum listing in the same directory."""

    url: str
    checksum_url: str
    algorithm: str
    name: str
    note: str


NCBI_DIR = (
    "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCA/000/001/405/GCA_000001405.15_GRCh38/"
    "seqs_for_alignment_pipelines.ucsc_ids/"
)
ENSEMBL_DIR = "https://ftp.ensembl.org/pub/current_fasta/homo_sapiens/dna/"
GRCH38_SOURCES = {
    "ncbi": KnownSource(
        url=NCBI_DIR + "GCA_000001405.15_GRCh38_no_alt_analysis_set.fna.gz",
        checksum_url=NCBI_DIR + "md5checksums.txt",
        algorithm="md5",
        name="GRCh38_no_alt_analysis_set",
        note="UCSC names (chr1..chr22, chrX, chrY, chrM, scaffolds, chrEBV); PAR regions of chrY hard-masked "
        "with N; training selects chr1..22, X, Y by default",
    ),
    "ensembl": KnownSource(
        url=ENSEMBL_DIR + "Homo_sapiens.GRCh38.dna.primary_assembly.fa.gz",
        checksum_url=ENSEMBL_DIR + "CHECKSUMS",
        algorithm=BSD_SUM,
        name="Homo_sapiens.GRCh38.dna.primary_assembly",
        note="Ensembl names (1..22, X, Y, MT, scaffolds); training selects 1..22, X, Y by default",
    ),
}


@dataclass(frozen=True)
class ContigRow:
    name: str
    length: int
    acgt: int
    n: int
    other: int


@dataclass(frozen=True)
class GenomeStats:
    """What the file holds (all contigs, from the .fai) and what training uses (default contig selection)."""

    fasta: Path
    file_contigs: int
    file_bp: int
    selected: list[ContigRow]
    report: str

    @property
    def selected_bp(self) -> int:
        return sum(row.length for row in self.selected)

    @property
    def n_fraction(self) -> float:
        """Fraction of N in the selected contigs (other IUPAC letters are counted apart)."""
        return sum(row.n for row in self.selected) / max(self.selected_bp, 1)


def local_path(url: str) -> Path | None:
    """The file a file:// URL or a plain path points at; None for network URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(url).expanduser()
    return None


class UnreachableError(DnabertError):
    """No network (or the server refused): the message says how to fetch by hand and pass the local path."""

    def __init__(self, url: str, reason: object, manual_steps: str) -> None:
        super().__init__(
            f"could not reach {url} ({reason}). Download by hand on a machine with internet access (browser, "
            f"curl -O or wget) and copy here: {manual_steps}"
        )
        self.url = url
        self.reason = reason


def offline_error(url: str, reason: object, out_dir: Path) -> UnreachableError:
    name = Path(urllib.parse.urlparse(url).path).name or "the file"
    return UnreachableError(
        url, reason, f"{url}, then run: python data/fetch_genome.py url /path/to/{name} "
        f"--md5 <published md5> --out {out_dir}"
    )


def open_url(url: str, out_dir: Path, start_byte: int = 0):
    """urlopen with a timeout and a Range request for resuming; network failures become one clear error."""
    headers = {"Range": f"bytes={start_byte}-"} if start_byte else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=NETWORK_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start_byte:  # the .part is already complete
            return None
        raise offline_error(url, f"HTTP {err.code} {err.reason}", out_dir) from err
    except (urllib.error.URLError, OSError) as err:
        raise offline_error(url, getattr(err, "reason", err), out_dir) from err


def read_text(url: str, out_dir: Path) -> str:
    """A small file (a checksum listing) from a URL or a local path."""
    path = local_path(url)
    if path is not None:
        try:
            return path.read_text()
        except OSError as err:
            raise DnabertError(f"cannot read the checksum file {path} ({err.strerror}).") from err
    with open_url(url, out_dir) as response:
        return response.read().decode("utf-8", errors="replace")


def parse_checksum_listing(text: str, filename: str) -> str:
    """The checksum a listing gives for `filename`: every field of its line but the last (the name).

    md5sum style ("<md5>  ./<name>") gives the md5; Ensembl's `sum` style ("<sum> <blocks> <name>") gives
    "<sum> <blocks>".
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and Path(fields[-1]).name == filename:
            return " ".join(fields[:-1]).lower()
    raise DnabertError(
        f"the checksum listing has no line for {filename}; the provider may have renamed the file. "
        "Check the directory listing and pass the file URL and its checksum with the `url` command."
    )


def download(url: str, destination: Path) -> Path:
    """Download to `<destination>.part` (resuming a previous attempt), then rename; prints a progress line."""
    partial = destination.with_name(destination.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    response = open_url(url, destination.parent, start_byte=have)
    if response is None:
        partial.replace(destination)
        return destination
    with response:
        resumed = response.status == 206
        total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
        done = have if resumed else 0
        last_print = 0.0
        with partial.open("ab" if resumed else "wb") as handle:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                done += len(chunk)
                if time.monotonic() - last_print > 0.5:
                    last_print = time.monotonic()
                    share = f" ({done / total:.0%})" if total else ""
                    print(f"\r  {destination.name}: {done / 1e6:,.1f} / {total / 1e6:,.1f} MB{share}",
                          end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if total and done != total:
        raise DnabertError(f"download of {url} stopped at {done:,} of {total:,} bytes; run again to resume.")
    partial.replace(destination)
    return destination


def bsd_sum(path: Path) -> str:
    """`sum` (BSD checksum, 1 KiB blocks) as Ensembl publishes it; coreutils computes it in C."""
    executable = shutil.which("sum")
    if executable is None:
        raise DnabertError("verifying an Ensembl download needs the `sum` command (coreutils); install it.")
    output = subprocess.run([executable, "-r", str(path)], capture_output=True, text=True, check=True).stdout
    return " ".join(output.split()[:2])


def file_checksums(path: Path, algorithms: list[str]) -> dict[str, str]:
    """The requested checksums of a file, hashes in one streaming pass."""
    hashers = {name: hashlib.new(name) for name in algorithms if name in HASH_ALGORITHMS}
    if hashers:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                for hasher in hashers.values():
                    hasher.update(chunk)
    found = {name: hasher.hexdigest() for name, hasher in hashers.items()}
    if BSD_SUM in algorithms:
        found[BSD_SUM] = bsd_sum(path)
    return found


def normalise_checksum(algorithm: str, value: str) -> str:
    """Hex hashes compare case-blind; BSD sums as numbers ("05678 12" is "5678 12": tools differ in padding)."""
    if algorithm == BSD_SUM:
        return " ".join(str(int(field)) for field in value.split())
    return value.strip().lower()


def verify(path: Path, expected: dict[str, str]) -> None:
    """Refuse a file whose checksum differs from the published one."""
    found = file_checksums(path, list(expected))
    for algorithm, value in expected.items():
        if normalise_checksum(algorithm, found[algorithm]) != normalise_checksum(algorithm, value):
            raise DnabertError(
                f"{algorithm} checksum mismatch for {path.name}: expected {value}, got {found[algorithm]}. "
                "The file is corrupt, truncated or not the one published, so it was not used; fetch it again."
            )


def gunzip(source: Path, destination: Path) -> None:
    """Plain and bgzip (multi-member) gzip both decompress here; written to .part, then renamed."""
    partial = destination.with_name(destination.name + ".part")
    print(f"  decompressing {source.name} -> {destination.name}", file=sys.stderr)
    try:
        with gzip.open(source, "rb") as compressed, partial.open("wb") as plain:
            shutil.copyfileobj(compressed, plain, CHUNK_BYTES)
    except (OSError, EOFError) as err:
        partial.unlink(missing_ok=True)
        raise DnabertError(f"{source} is not a valid gzip file ({err}); fetch it again.") from err
    partial.replace(destination)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def fetch(url: str, out_dir: Path, name: str, expected: dict[str, str], keep_compressed: bool = False) -> Path:
    """Get a verified, uncompressed `<out_dir>/<name>.fa`; a second call with the same source does nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.fa"
    provenance_path = out_dir / f"{name}.fa.source.json"
    provenance = {"url": url, "checksums": expected}
    if final.exists() and provenance_path.exists() and json.loads(provenance_path.read_text()) == provenance:
        print(f"  {final} already fetched and verified", file=sys.stderr)
        return final
    source = local_path(url)
    downloaded = source is None
    if source is None:
        source = download(url, out_dir / Path(urllib.parse.urlparse(url).path).name)
    elif not source.is_file():
        raise DnabertError(f"{source} does not exist; give the path of the downloaded genome file.")
    if expected:
        try:
            verify(source, expected)
        except DnabertError:
            if downloaded:
                source.unlink()
            raise
        print(f"  {source.name}: {', '.join(expected)} verified", file=sys.stderr)
    else:
        print(f"  WARNING: no checksum given, {source.name} is not verified", file=sys.stderr)
    same_file = source.resolve() == final.resolve()
    if not same_file:  # drop a genome from an earlier source, and its index
        final.unlink(missing_ok=True)
    final.with_name(final.name + ".fai").unlink(missing_ok=True)
    if is_gzip(source):
        gunzip(source, final)  # writes final.part, then renames: safe even when source is final
        if downloaded and not keep_compressed and not same_file:
            source.unlink()
    elif downloaded and not same_file:
        source.replace(final)
    elif not same_file:
        try:  # a hard link costs no space; across file systems, copy
            os.link(source, final)
        except OSError:
            shutil.copyfile(source, final)
    provenance_path.write_text(json.dumps(provenance, indent=1))
    return final


def index_and_stats(fasta: Path, name: str, k: int) -> GenomeStats:
    """Build the .fai (pyfaidx) and the interval cache (dnabert.data.genome), and collect the statistics."""
    import pyfaidx

    from dnabert.data.genome import Genome, GenomeSource

    try:
        faidx = pyfaidx.Faidx(str(fasta))
    except (pyfaidx.FastaIndexingError, ValueError) as err:
        raise DnabertError(f"{fasta} cannot be indexed as FASTA ({err}); is it a FASTA file?") from err
    index = faidx.index
    faidx.close()
    genome = Genome.open(GenomeSource(name, fasta), k)
    rows = [
        ContigRow(contig.name, stats.length, stats.acgt, stats.n, stats.iupac)
        for contig, stats in zip(genome.contigs, genome.stats, strict=True)
    ]
    return GenomeStats(
        fasta=fasta,
        file_contigs=len(index),
        file_bp=sum(record.rlen for record in index.values()),
        selected=rows,
        report=genome.report(),
    )


def format_stats(stats: GenomeStats) -> str:
    lines = [
        f"{stats.fasta}: {stats.file_contigs:,} contigs, {stats.file_bp:,} bp in the file",
        f"training selection: {len(stats.selected)} contigs, {stats.selected_bp:,} bp, "
        f"N fraction {stats.n_fraction:.4%}",
        f"{'contig':<24}{'length':>15}{'A/C/G/T':>15}{'N':>13}{'other':>9}{'N %':>9}",
    ]
    lines += [
        f"{row.name:<24}{row.length:>15,}{row.acgt:>15,}{row.n:>13,}{row.other:>9,}"
        f"{row.n / max(row.length, 1):>9.2%}"
        for row in stats.selected
    ]
    return "\n".join([*lines, stats.report])


def expected_checksums(args: argparse.Namespace, filename: str, out_dir: Path) -> dict[str, str]:
    expected = {name: getattr(args, name) for name in HASH_ALGORITHMS if getattr(args, name)}
    if args.checksum_url:
        listed = parse_checksum_listing(read_text(args.checksum_url, out_dir), filename)
        expected[args.checksum_algorithm] = listed
    return expected


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grch38 = commands.add_parser("grch38", help="the human reference, with its published checksum")
    grch38.add_argument("--source", choices=sorted(GRCH38_SOURCES), default="ncbi")
    url = commands.add_parser("url", help="any FASTA(.gz) URL or local path")
    url.add_argument("url", help="http(s)://, ftp://, file:// URL or a local path")
    url.add_argument("--name", help="output name (default: the file name without extensions)")
    url.add_argument("--md5")
    url.add_argument("--sha256")
    url.add_argument("--checksum-url", help="a checksum listing published beside the file")
    url.add_argument("--checksum-algorithm", choices=[*HASH_ALGORITHMS, BSD_SUM], default="md5")
    for command in (grch38, url):
        command.add_argument("--out", type=Path, required=True, help="output directory")
        command.add_argument("--k", type=int, default=6, help="k of the interval cache check (any 3..6)")
        command.add_argument("--keep-compressed", action="store_true", help="keep the downloaded .gz")
    args = parser.parse_args(argv)
    out_dir = args.out.expanduser()
    if args.command == "grch38":
        known = GRCH38_SOURCES[args.source]
        filename = Path(known.url).name
        print(f"GRCh38 from {args.source}: {known.note}", file=sys.stderr)
        try:
            listed = parse_checksum_listing(read_text(known.checksum_url, out_dir), filename)
            fasta = fetch(known.url, out_dir, known.name, {known.algorithm: listed}, args.keep_compressed)
        except UnreachableError as err:
            listing = Path(known.checksum_url).name
            raise UnreachableError(
                err.url, err.reason, f"{known.url} and {known.checksum_url}, then run: python "
                f"data/fetch_genome.py url /path/to/{filename} --checksum-url /path/to/{listing} "
                f"--checksum-algorithm {known.algorithm} --name {known.name} --out {out_dir}",
            ) from err
        name = known.name
    else:
        filename = Path(urllib.parse.urlparse(args.url).path).name
        name = args.name or filename.split(".")[0]
        expected = expected_checksums(args, filename, out_dir)
        fasta = fetch(args.url, out_dir, name, expected, args.keep_compressed)
    print(format_stats(index_and_stats(fasta, name, args.k)))
    print(f"ready: data.fasta={fasta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
