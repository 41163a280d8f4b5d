"""Attention maps of a trained model for one or a few sequences: arrays and heat maps per layer.

``python -m dnabert.tools.attention <model> <sequence | file> <out dir> [--layers last|all|N,M]``: per sequence
``<id>.npz`` (token and nucleotide attention, every head of the chosen layers) and per layer a heat map of the mean
over heads and a grid of the heads (docs/guide/using-models.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from dnabert.errors import DnabertError, command_line
from dnabert.run.attention import attention_maps, parse_layers, save_maps
from dnabert.run.inference import INPUT_FORMATS, SequenceRecord, SequenceSource, load_backbone, resolve_device


def records_of(argument: str, input_format: str, count: int) -> list[SequenceRecord]:
    """The first `count` sequences of a file, or the argument itself as one sequence."""
    if Path(argument).is_file():
        return list(islice(SequenceSource(Path(argument), input_format).records(), count))
    sequence = argument.upper()
    if not sequence.isalpha() or set(sequence) - set("ACGT"):
        raise DnabertError(f"{argument[:60]!r} is neither an existing file nor a sequence of A/C/G/T.")
    return [SequenceRecord("sequence", sequence)]


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnabert.tools.attention",
                                     description="Attention maps of a trained dnabert model, per layer and head.")
    parser.add_argument("model", help="a pretraining run directory, a .ckpt, or a model directory (config.json)")
    parser.add_argument("sequence", help="a sequence of A/C/G/T, or a file of them (FASTA, table, one per line)")
    parser.add_argument("out_dir", help="where <id>.npz and the heat maps go")
    parser.add_argument("--layers", default="last", help="last (default), all, or 1-based numbers: 1,6,12")
    parser.add_argument("--max-sequences", type=int, default=4, help="sequences read from a file (default 4)")
    parser.add_argument("--format", dest="input_format", choices=INPUT_FORMATS, default="auto")
    parser.add_argument("--max-positions", type=int, default=None,
                        help="tokens of the one window incl. [CLS]/[SEP] (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    records = records_of(args.sequence, args.input_format, args.max_sequences)
    model = load_backbone(args.model, resolve_device(args.device), args.max_positions)
    layers = parse_layers(args.layers, int(model.backbone.config["num_hidden_layers"]))
    for record in records:
        paths = save_maps(attention_maps(model, record, layers), Path(args.out_dir))
        print(f"{record.id}: {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
