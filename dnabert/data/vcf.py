"""A minimal VCF reader for variant scoring: the eight fixed columns of each record, plain or gzip/bgzip.

Only what scoring needs is read (CHROM, POS, ID, REF, ALT and the INFO keys); genotype columns are ignored. A
record is kept as written: whether it can be scored (an SNV, a known contig, the FASTA's base) is the scorer's
decision, reported per row, never a reason to stop reading. A file without the `#CHROM` header line, or with a
record of fewer than eight columns or a POS that is not a positive integer, is not a VCF: one DnabertError names
the file and the line.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dnabert.data.genome import open_text
from dnabert.errors import DnabertError

FIXED_COLUMNS = ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")


@dataclass(frozen=True)
class Variant:
    """One VCF record: `pos` is 1-based as in the file; `alt` is the ALT column as written (commas and all)."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    info: dict[str, str] = field(default_factory=dict)


def _info(text: str) -> dict[str, str]:
    """INFO as a dict: `KEY=VALUE` pairs, flags as `KEY` -> "" ("." is no INFO)."""
    if text in ("", "."):
        return {}
    pairs = (entry.split("=", 1) for entry in text.split(";") if entry)
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def _lines(path: Path) -> Iterator[str]:
    with open_text(path) as handle:
        yield from handle


def read_vcf(path: str | Path) -> list[Variant]:
    """Every record of a VCF file (plain, gzip or bgzip), in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DnabertError(f"VCF file {path} does not exist; check the path.")
    variants: list[Variant] = []
    header_seen = False
    try:
        for number, line in enumerate(_lines(path), 1):
            line = line.rstrip("\r\n")
            if line.startswith("##") or not line:
                continue
            columns = line.split("\t")
            if line.startswith("#"):
                header_seen = tuple(columns[:8]) == FIXED_COLUMNS
                if not header_seen:
                    raise DnabertError(f"{path}:{number} is not a VCF header line: it should start with the tab-"
                                       f"separated columns {' '.join(FIXED_COLUMNS)}.")
                continue
            if not header_seen:
                raise DnabertError(f"{path} is not a VCF file: line {number} comes before the #CHROM header line; "
                                   "give a VCF (plain or bgzip), e.g. as written by bcftools.")
            if len(columns) < 8 or not columns[1].isdigit() or int(columns[1]) < 1:
                raise DnabertError(f"{path}:{number} is not a VCF record: it needs at least 8 tab-separated columns "
                                   "and a positive integer POS.")
            chrom, pos, variant_id, ref, alt, _, _, info = columns[:8]
            variants.append(Variant(chrom, int(pos), variant_id, ref.upper(), alt.upper(), _info(info)))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, io.UnsupportedOperation) as err:
        raise DnabertError(f"{path} is not a readable VCF file ({err}); give a plain, gzip or bgzip VCF.") from err
    if not header_seen:
        raise DnabertError(f"{path} is not a VCF file: it has no #CHROM header line.")
    return variants
