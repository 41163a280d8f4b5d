"""Predictions of a fine-tuned model: the label and class probabilities (or the regression value) per sequence.

``python -m dnabert.tools.predict <seed folder | its hf_model/ | a fine-tuning .ckpt> <input> <out.csv|.parquet>``:
the windows and the averaging of their logits are fine-tuning's, so a split's predictions equal those the run
wrote (seed_<n>/predictions.npz).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dnabert.errors import command_line
from dnabert.run.inference import (
    PREDICTION_OUTPUTS,
    SequenceSource,
    check_output,
    load_classifier,
    resolve_device,
    write_predictions,
)
from dnabert.tools.embed import add_input_arguments


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnabert.tools.predict",
                                     description="Predict labels of DNA sequences with a fine-tuned dnabert model.")
    parser.add_argument("model", help="a fine-tuning seed folder (seed_<n>/), its hf_model/, or a fine-tuning .ckpt")
    parser.add_argument("input", help="FASTA (plain or .gz), a .csv/.tsv/.parquet table, or one sequence per line")
    parser.add_argument("out", help="out.csv or out.parquet: id, label, probability_<class> (regression: prediction)")
    add_input_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.out, PREDICTION_OUTPUTS)
    source = SequenceSource(args.input, args.input_format, args.sequence_column, args.id_column, args.non_acgt)
    model = load_classifier(args.model, resolve_device(args.device), args.max_positions)
    paths, count = write_predictions(model, source, Path(args.out), args.batch_size)
    print(f"Predicted {count} sequence(s) into {paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
