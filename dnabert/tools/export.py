"""Export a trained checkpoint as a directory that transformers (or MultiMolecule) loads: the command line.

Each family's layouts live with the family (``dnabert.models.<family>.interop``: DNABERT's ``original``, transformers'
BertForMaskedLM with the original vocab.txt, and ``multimolecule``; DNABERT-2's ``multimolecule`` only, with the
run's BPE tokenizer), with their imports of released weights, reached through the family object
(``dnabert.models.get_family``). ``dnabert.run.saved_models`` reads Lightning checkpoints (pretraining and
fine-tuning) back into models; this module hands each model to its family's writer.

``python -m dnabert.tools.export <checkpoint.ckpt | run dir> <out dir> [--layout original|multimolecule]
[--tokenizer tokenizer.json]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dnabert.errors import command_line
from dnabert.models import family_of_config
from dnabert.models.interop import LAYOUTS
from dnabert.run.saved_models import (
    checkpoint_file,
    export_classifier,
    is_finetune_checkpoint,
    load_checkpoint,
    load_classifier_checkpoint,
    run_tokenizer,
)


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, layout: str | None = None, tokenizer_file: str | Path | None = None
) -> Path:
    """Export a Lightning checkpoint (or a run directory's ``checkpoints/last.ckpt``) of pretraining or of
    fine-tuning (finetune.py: a BertForSequenceClassification / DnaBertForSequencePrediction); returns the out dir.

    ``layout`` defaults to the family's first layout ("original" for DNABERT, "multimolecule" for DNABERT-2).
    A BPE family's export (DNABERT-2) needs the run's tokenizer: ``tokenizer_file``, by default ``tokenizer.json``
    of the run directory (the checkpoint's ``../..``), else the run config's ``tokenizer.file`` (a file or its
    folder)."""
    path = checkpoint_file(checkpoint)
    if is_finetune_checkpoint(path):
        classifier, backbone, labels = load_classifier_checkpoint(path)
        return export_classifier(classifier, backbone, labels, out_dir, layout, {"checkpoint": str(checkpoint)})
    model, k, card_config = load_checkpoint(checkpoint)
    family = family_of_config(model.config)
    if family.tokenizer == "bpe":
        tokenizer_file = tokenizer_file or run_tokenizer(Path(checkpoint), card_config.get("train_config") or {})
    return family.export(model, Path(out_dir), layout, k, tokenizer_file and Path(tokenizer_file), card_config)


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dnabert.tools.export",
        description="Write a trained dnabert checkpoint as a transformers / MultiMolecule model directory.",
    )
    parser.add_argument("checkpoint", help="a Lightning .ckpt file, or a run directory (uses checkpoints/last.ckpt)")
    parser.add_argument("out_dir", help="the directory to write (an earlier export there is replaced)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="default: original for DNABERT, multimolecule for DNABERT-2")
    parser.add_argument("--tokenizer", default=None,
                        help="DNABERT-2: the run's BPE tokenizer.json (default: tokenizer.json in the run directory)")
    args = parser.parse_args(argv)
    out_dir = export_checkpoint(args.checkpoint, args.out_dir, args.layout, args.tokenizer)
    print(f"Wrote {out_dir}" + (f" ({args.layout} layout)" if args.layout else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
