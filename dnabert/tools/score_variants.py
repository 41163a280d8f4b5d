"""Zero-shot variant effects: score a VCF's SNVs with a pretrained masked-LM (dnabert.run.variants), the command line.

``python -m dnabert.tools.score_variants <backbone> <reference.fa[.gz]> <variants.vcf[.gz]> <out.tsv|out.parquet>
[--reverse-complement] [--batch-size 64] [--max-positions N] [--device auto]``

The backbone is anything fine-tuning's `pretrained=` takes except `none`: a pretraining run directory or .ckpt,
an exported model directory, or released DNABERT / DNABERT-2 weights. One row per VCF record, in file order:
chrom, pos, id, ref, alt, score (log P(alt) - log P(ref); empty unless scored), status, note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dnabert.data.genome import Reference
from dnabert.data.vcf import read_vcf
from dnabert.errors import DnabertError, command_line

if TYPE_CHECKING:

    from dnabert.run.finetuning import Backbone
    from dnabert.run.variants import VariantScore, VariantScorer

OUTPUT_SUFFIXES = (".tsv", ".parquet")


def scorer_for(backbone: Backbone, positions: int | None = None) -> VariantScorer:
    """A scorer for what `pretrained=` names (its MLM head included); `positions` defaults to the backbone's
    window and may not exceed its hard limit."""
    from dnabert.run.finetuning import build_masked_lm  # Lightning, through the fine-tuning runner
    from dnabert.run.variants import VariantScorer  # torch

    default, limit = backbone.positions
    positions = positions or default
    if limit is not None and positions > limit:
        raise DnabertError(f"--max-positions {positions} exceeds the model's {limit} positions; lower it.")
    return VariantScorer(build_masked_lm(backbone), positions, backbone.k, backbone.tokenizer)


def write_scores(rows: Sequence[VariantScore], out: Path) -> None:
    """The rows as a TSV (tab-separated, a header line, an empty score where unscored) or a Parquet table."""
    import pandas as pd  # at the end only: a bad file is reported without waiting for pandas

    table = pd.DataFrame({
        "chrom": [row.variant.chrom for row in rows], "pos": [row.variant.pos for row in rows],
        "id": [row.variant.id for row in rows], "ref": [row.variant.ref for row in rows],
        "alt": [row.variant.alt for row in rows], "score": pd.array([row.score for row in rows], dtype="Float64"),
        "status": [row.status for row in rows], "note": [row.note for row in rows],
    })
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            table.to_parquet(out, index=False)
        else:
            table.to_csv(out, sep="\t", index=False, na_rep="")
    except OSError as err:
        raise DnabertError(f"cannot write {out} ({err.strerror}); choose a writable place.") from err


def summary(rows: Sequence[VariantScore], scored: str) -> str:
    counts = Counter(row.status for row in rows)
    parts = [f"{counts.pop(scored, 0):,} scored"] + [f"{count:,} {status}" for status, count in counts.most_common()]
    return f"{len(rows):,} records: " + ", ".join(parts)


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dnabert.tools.score_variants",
        description="Score the SNVs of a VCF with a pretrained masked-LM: log P(alt) - log P(ref) at each variant, "
                    "the tokens that contain it masked.")
    parser.add_argument("backbone", help="a pretraining run directory or .ckpt, or a model directory (exported, or "
                                         "released DNABERT / DNABERT-2 weights)")
    parser.add_argument("reference", help="the reference FASTA the VCF refers to (plain or bgzip)")
    parser.add_argument("variants", help="the VCF (plain, gzip or bgzip)")
    parser.add_argument("out", help="the table to write: .tsv or .parquet")
    parser.add_argument("--reverse-complement", action="store_true",
                        help="average the score with the reverse complement's")
    parser.add_argument("--batch-size", type=int, default=64, help="variants per forward pass (default 64)")
    parser.add_argument("--max-positions", type=int, default=None,
                        help="tokens per context with [CLS]/[SEP] (default: the model's window)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise DnabertError(f"output {out}: name a .tsv or .parquet file.")
    if args.batch_size < 1:
        raise DnabertError(f"--batch-size {args.batch_size} must be at least 1.")
    if str(args.backbone).lower() == "none":
        raise DnabertError("backbone none has random weights and no trained MLM head to score with; give a "
                           "pretraining run directory, a .ckpt or a model directory.")
    reference = Reference(args.reference)
    variants = read_vcf(args.variants)
    contigs = {variant.chrom for variant in variants}
    if contigs and not contigs & reference.lengths.keys():
        raise DnabertError(f"no contig of {args.variants} ({', '.join(sorted(contigs)[:3])} ...) is in "
                           f"{args.reference} ({', '.join(list(reference.lengths)[:3])} ...); give the reference "
                           "the VCF was called against, or rename the contigs (e.g. bcftools annotate --rename-chrs).")
    from dnabert.run.inference import resolve_device  # with the model: bad files are reported before torch loads

    device = resolve_device(args.device)
    # Imported once the inputs are known to be good: Lightning and transformers take seconds to import.
    from tqdm import tqdm

    from dnabert.run.finetuning import resolve_backbone  # Lightning, through the fine-tuning runner
    from dnabert.run.variants import SCORED, STATUSES  # torch

    with tempfile.TemporaryDirectory() as work_dir:  # a released DNABERT-2 tokenizer is converted here
        backbone = resolve_backbone(args.backbone, None, {}, work_dir=Path(work_dir))
        scorer = scorer_for(backbone, args.max_positions)
        with tqdm(total=len(variants), unit="variant", desc="scoring", file=sys.stderr, disable=None) as bar:
            rows = scorer.score(reference, variants, args.reverse_complement, args.batch_size, device, bar.update)
    write_scores(rows, out)
    print(f"{summary(rows, SCORED)}; wrote {out}")
    unscored = [status for status in dict.fromkeys(row.status for row in rows) if status != SCORED]
    for status in unscored:
        print(f"  {status}: {STATUSES[status]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
