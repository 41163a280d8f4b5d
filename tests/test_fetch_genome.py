"""Genome fetching on local files and a localhost server only: verify, decompress, index, statistics, errors."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dnabert.errors import DnabertError

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "fetch_genome.py"
spec = importlib.util.spec_from_file_location("fetch_genome", SCRIPT)
fetch_genome = importlib.util.module_from_spec(spec)
sys.modules["fetch_genome"] = fetch_genome  # dataclasses look their module up there
spec.loader.exec_module(fetch_genome)

# Two contigs, 60-column lines: chrA 130 bp with 10 N, chrB 75 bp with 15 N and 5 other IUPAC letters (R).
CONTIGS = {
    "chrA": "ACGT" * 10 + "N" * 10 + "TTGCA" * 16,
    "chrB": "GATTACA" * 5 + "N" * 15 + "RRRRR" + "ACGTACGTAC" * 2,
}


def fasta_text() -> str:
    lines = []
    for name, sequence in CONTIGS.items():
        lines.append(f">{name} test contig")
        lines += [sequence[i : i + 60] for i in range(0, len(sequence), 60)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def gzipped_fasta(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "src" / "tiny.fa.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(fasta_text().encode()))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_gunzip_index_and_stats(tmp_path, gzipped_fasta, capsys):
    source, md5 = gzipped_fasta
    out = tmp_path / "out"
    assert fetch_genome.main(["url", source.as_uri(), "--md5", md5, "--out", str(out), "--k", "3"]) == 0
    fasta = out / "tiny.fa"
    assert fasta.read_text() == fasta_text()  # plain FASTA, byte for byte
    assert (out / "tiny.fa.fai").is_file()
    assert list(out.glob("tiny.fa.dnabert-intervals-*.npz"))  # the interval cache is built

    stats = fetch_genome.index_and_stats(fasta, "tiny", k=3)
    assert stats.file_contigs == 2
    assert stats.file_bp == 130 + 75
    assert [(row.name, row.length, row.acgt, row.n, row.other) for row in stats.selected] == [
        ("chrA", 130, 120, 10, 0),
        ("chrB", 75, 55, 15, 5),
    ]
    assert stats.n_fraction == pytest.approx(25 / 205)
    printed = capsys.readouterr().out
    assert "2 contigs, 205 bp" in printed and "N fraction 12.1951%" in printed and "ready: data.fasta=" in printed


def test_sha256_and_plain_local_path(tmp_path):
    source = tmp_path / "plain.fa"
    source.write_text(fasta_text())
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    final = fetch_genome.fetch(str(source), tmp_path / "out", "plain", {"sha256": sha256})
    assert final.read_text() == fasta_text()
    assert source.exists()  # a local source is linked or copied, never moved


def test_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, gzipped_fasta, capsys):
    source, _ = gzipped_fasta
    out = tmp_path / "out"
    assert fetch_genome.main(["url", str(source), "--md5", "0" * 32, "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "md5 checksum mismatch for tiny.fa.gz" in message and "0" * 32 in message
    assert not (out / "tiny.fa").exists()
    assert source.exists()  # the user's own file is left alone


def test_checksum_listing_formats():
    ncbi = "d41d8cd98f00b204e9800998ecf8427e  ./GCA_x_genomic.gbff.gz\nA4E4B1C2  ./GCA_no_alt.fna.gz\n"
    assert fetch_genome.parse_checksum_listing(ncbi, "GCA_no_alt.fna.gz") == "a4e4b1c2"
    ensembl = "46513 919384 Homo_sapiens.GRCh38.dna.primary_assembly.fa.gz\n1 2 README\n"
    listed = fetch_genome.parse_checksum_listing(ensembl, "Homo_sapiens.GRCh38.dna.primary_assembly.fa.gz")
    assert listed == "46513 919384"
    with pytest.raises(DnabertError, match="no line for other.fa.gz"):
        fetch_genome.parse_checksum_listing(ncbi, "other.fa.gz")


def test_bsd_sum_listing_verifies_with_coreutils(tmp_path, gzipped_fasta):
    if fetch_genome.shutil.which("sum") is None:
        pytest.skip("no `sum` command")
    source, _ = gzipped_fasta
    checksum, blocks = fetch_genome.bsd_sum(source).split()
    listing = tmp_path / "CHECKSUMS"
    listing.write_text(f"0{checksum} {blocks} tiny.fa.gz\n")  # zero padding differs between tools
    args = ["url", str(source), "--checksum-url", str(listing), "--checksum-algorithm", "bsd-sum"]
    assert fetch_genome.main([*args, "--out", str(tmp_path / "out")]) == 0
    listing.write_text(f"{(int(checksum) + 1) % 65536} {blocks} tiny.fa.gz\n")
    assert fetch_genome.main([*args, "--out", str(tmp_path / "other")]) == 2


@pytest.fixture
def local_server(tmp_path):
    """A localhost HTTP server over tmp_path/src: exercises the download path without the internet."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "src"))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_download_verify_and_refuse(tmp_path, gzipped_fasta, local_server):
    _, md5 = gzipped_fasta
    url = f"{local_server}/tiny.fa.gz"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny.fa.gz.part").write_bytes(b"stale")  # a server without Range restarts cleanly
    final = fetch_genome.fetch(url, tmp_path / "out", "tiny", {"md5": md5})
    assert final.read_text() == fasta_text()
    assert not list((tmp_path / "out").glob("tiny.fa.gz*"))  # the verified .gz is removed after gunzip

    with pytest.raises(DnabertError, match="checksum mismatch"):
        fetch_genome.fetch(url, tmp_path / "bad", "tiny", {"md5": "f" * 32})
    assert not (tmp_path / "bad" / "tiny.fa").exists()
    assert not list((tmp_path / "bad").glob("tiny.fa.gz*"))  # the corrupt download is deleted


def test_offline_fails_at_the_first_attempt_with_instructions(tmp_path, monkeypatch):
    """No retry loop: one refused connection, bounded by a timeout, becomes the instructions to fetch by hand."""
    attempts = []
    real_urlopen = fetch_genome.urllib.request.urlopen

    def counting_urlopen(request, timeout=None):
        attempts.append(timeout)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(fetch_genome.urllib.request, "urlopen", counting_urlopen)
    with pytest.raises(DnabertError) as caught:
        fetch_genome.fetch("http://127.0.0.1:9/x.fa.gz", tmp_path, "x", {"md5": "0" * 32})
    message = str(caught.value)
    assert message.startswith("could not reach http://127.0.0.1:9/x.fa.gz")
    assert "python data/fetch_genome.py url /path/to/x.fa.gz" in message
    assert attempts == [fetch_genome.NETWORK_TIMEOUT_S]


def test_missing_local_file_and_non_fasta(tmp_path):
    with pytest.raises(DnabertError, match="does not exist"):
        fetch_genome.fetch(str(tmp_path / "nope.fa"), tmp_path / "out", "nope", {})
    junk = tmp_path / "junk.fa"
    junk.write_text(">a\nACGT\nACGTACGT\nAC\n")  # inconsistent line lengths: pyfaidx cannot index it
    with pytest.raises(DnabertError, match="junk.fa"):
        fetch_genome.index_and_stats(junk, "junk", k=3)


def test_grch38_command_reads_the_published_listing(tmp_path, gzipped_fasta, local_server, monkeypatch, capsys):
    source, md5 = gzipped_fasta
    (source.parent / "md5checksums.txt").write_text(f"{'a' * 32}  ./README.txt\n{md5}  ./tiny.fa.gz\n")
    known = fetch_genome.KnownSource(url=f"{local_server}/tiny.fa.gz", checksum_url=f"{local_server}/md5checksums.txt",
                                     algorithm="md5", name="grch38_stand_in", note="test stand-in")
    monkeypatch.setitem(fetch_genome.GRCH38_SOURCES, "ncbi", known)
    assert fetch_genome.main(["grch38", "--out", str(tmp_path / "out"), "--k", "3"]) == 0
    assert (tmp_path / "out" / "grch38_stand_in.fa").read_text() == fasta_text()
    assert "md5 verified" in capsys.readouterr().err
    # A second run finds the verified genome and does not download again.
    (source.parent / "tiny.fa.gz").unlink()
    assert fetch_genome.main(["grch38", "--out", str(tmp_path / "out"), "--k", "3"]) == 0
    assert "already fetched and verified" in capsys.readouterr().err


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves one file and honours `Range: bytes=N-` as real mirrors do, so a download can resume."""

    payload = b""
    requested_starts: list[int] = []

    def do_GET(self) -> None:
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers["Range"] else 0
        self.requested_starts.append(start)
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_interrupted_download_resumes(tmp_path, gzipped_fasta):
    source, md5 = gzipped_fasta
    payload = source.read_bytes()
    handler = type("Handler", (RangeHandler,), {"payload": payload, "requested_starts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / "tiny.fa.gz.part").write_bytes(payload[:50])  # what an interrupted first attempt left
        final = fetch_genome.fetch(f"http://127.0.0.1:{server.server_port}/tiny.fa.gz", out, "tiny", {"md5": md5})
    finally:
        server.shutdown()
        server.server_close()
    assert handler.requested_starts == [50]  # asked only for the missing bytes
    assert final.read_text() == fasta_text()


def test_grch38_offline_says_which_two_files_to_fetch_by_hand(tmp_path, monkeypatch, capsys):
    known = fetch_genome.GRCH38_SOURCES["ncbi"]
    unreachable = fetch_genome.KnownSource(url="http://127.0.0.1:9/GCA_x.fna.gz",
                                           checksum_url="http://127.0.0.1:9/md5checksums.txt",
                                           algorithm="md5", name=known.name, note=known.note)
    monkeypatch.setitem(fetch_genome.GRCH38_SOURCES, "ncbi", unreachable)
    assert fetch_genome.main(["grch38", "--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err.splitlines()[-1]
    assert message.startswith("dnabert: error: could not reach http://127.0.0.1:9/md5checksums.txt")
    assert "url /path/to/GCA_x.fna.gz --checksum-url /path/to/md5checksums.txt --checksum-algorithm md5" in message


def test_source_already_at_the_final_name(tmp_path):
    """A FASTA given in place (or downloaded under the output name) is kept, not deleted as a stale genome."""
    fasta = tmp_path / "genome.fa"
    fasta.write_text(fasta_text())
    assert fetch_genome.fetch(str(fasta), tmp_path, "genome", {}).read_text() == fasta_text()
    packed = tmp_path / "packed.fa"
    packed.write_bytes(gzip.compress(fasta_text().encode()))  # gzip content under a .fa name
    assert fetch_genome.fetch(str(packed), tmp_path, "packed", {}).read_text() == fasta_text()
