"""Embeddings of a trained model: per sequence (pooled), per token or per nucleotide, streamed to disk.

``python -m dnabert.tools.embed <model> <input> <out.parquet|out.npy> [--level sequence|token|nucleotide]
[--pool mean|cls]``: the model is anything fine-tuning's ``pretrained=`` accepts; the input a FASTA (plain or
.gz), a csv/tsv/parquet table or one sequence per line. docs/guide/using-models.md says what each output holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dnabert.errors import command_line
from dnabert.run.inference import (
    EMBEDDING_OUTPUTS,
    INPUT_FORMATS,
    LEVELS,
    NON_ACGT,
    POOLS,
    SequenceSource,
    check_output,
    load_backbone,
    resolve_device,
    write_embeddings,
)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read the sequences (shared by embed and predict)."""
    parser.add_argument("--format", dest="input_format", choices=INPUT_FORMATS, default="auto",
                        help="auto: .csv/.tsv/.parquet are tables, a file starting with '>' FASTA, else one sequence "
                             "per line")
    parser.add_argument("--sequence-column", default="sequence", help="a table's sequence column (default: sequence)")
    parser.add_argument("--id-column", default=None,
                        help="a table's id column (default: 'id' if present, else the row number from 0)")
    parser.add_argument("--non-acgt", choices=NON_ACGT, default="error",
                        help="a sequence with letters other than A/C/G/T (after upper-casing): stop with an error "
                             "(default), or skip it and count it")
    parser.add_argument("--max-positions", type=int, default=None,
                        help="tokens per window incl. [CLS]/[SEP] (default: the model's); longer sequences become "
                             "overlapping windows")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass and per write")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:N")


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnabert.tools.embed",
                                     description="Embed DNA sequences with a trained dnabert model.")
    parser.add_argument("model", help="a pretraining run directory, a .ckpt, or a model directory (config.json)")
    parser.add_argument("input", help="FASTA (plain or .gz), a .csv/.tsv/.parquet table, or one sequence per line")
    parser.add_argument("out", help="out.parquet, or out.npy (with out.ids.tsv and out.json beside it)")
    parser.add_argument("--level", choices=LEVELS, default="sequence",
                        help="sequence: one pooled vector per sequence (default); token; nucleotide")
    parser.add_argument("--pool", choices=POOLS, default="mean",
                        help="--level sequence: mean over the tokens (default) or the [CLS] state")
    add_input_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.out, EMBEDDING_OUTPUTS)
    source = SequenceSource(args.input, args.input_format, args.sequence_column, args.id_column, args.non_acgt)
    model = load_backbone(args.model, resolve_device(args.device), args.max_positions)
    paths, count = write_embeddings(model, source, args.out, args.level, args.pool, args.batch_size)
    print(f"Embedded {count} sequence(s) ({args.level} level) into {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
