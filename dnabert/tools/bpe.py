"""Train or convert a BPE tokenizer for DNABERT-2-style runs: the command line (dnabert.data.bpe_training trains,
dnabert.data.tokenizers.bpe converts).

``python -m dnabert.tools.bpe train --fasta PATH[:WEIGHT] ... --out DIR`` (console script ``dnabert-bpe``) or
``python -m dnabert.tools.bpe convert FILE --out DIR``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dnabert.data.bpe_training import mean_bp_per_token, train_bpe, training_texts
from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.tokenizers.bpe import DEFAULT_VOCAB_SIZE, convert_bpe, save_bpe
from dnabert.errors import command_line


def _parse_genome(text: str) -> dict:
    """`PATH` or `PATH:WEIGHT` -> a data.genomes entry named after the file."""
    path, separator, weight = text.rpartition(":")
    try:
        share = float(weight) if separator else 1.0
    except ValueError:
        path, share = text, 1.0
    if not separator:
        path = text
    return {"name": Path(path).name.split(".")[0], "fasta": path, "weight": share}


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dnabert.tools.bpe train`: a tokenizer.json from FASTA files, weighted like a run;
    `convert`: a published-order tokenizer.json with this project's special ids."""
    parser = argparse.ArgumentParser(prog="python -m dnabert.tools.bpe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a BPE tokenizer on windows sampled from the genomes")
    train.add_argument("--fasta", action="append", required=True, metavar="PATH[:WEIGHT]",
                       help="a genome FASTA and its share of the stream (default 1); repeat for several genomes")
    train.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json (+ transformers config)")
    train.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    train.add_argument("--train-bp", type=float, default=1e8, help="bp of sampled windows to train on")
    train.add_argument("--seed", type=int, default=0, help="the stream's seed (data.seed of the run)")
    train.add_argument("--val-fraction", type=float, default=0.01, help="held out as in the run (data.val_fraction)")
    convert = commands.add_parser("convert", help="renumber a tokenizer's special ids (the published DNABERT-2 order) "
                                  "to this project's, keeping every other token's id")
    convert.add_argument("file", type=Path, help="tokenizer.json or its folder")
    convert.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json (+ transformers config)")
    args = parser.parse_args(argv)
    if args.command == "convert":
        tokenizer, order = convert_bpe(args.file)
        print(f"wrote {save_bpe(tokenizer, args.out)} (new special id i = old id {list(order)}[i])")
        return 0
    data = GenomeDataModule([_parse_genome(text) for text in args.fasta], seed=args.seed,
                            val_fraction=args.val_fraction, num_workers=0)
    tokenizer = train_bpe(data, int(args.train_bp), args.vocab_size)
    path = save_bpe(tokenizer, args.out)
    sample = list(training_texts(data, min(int(args.train_bp), 1_000_000), lambda _: None))
    print(f"  {mean_bp_per_token(tokenizer, sample):.2f} bp per token on average (size data.window_bp with it)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
