"""Export a trained checkpoint as a directory that transformers (or MultiMolecule) loads: the command line.

Each family's layouts live with the family: ``dnabert.models.dnabert.interop`` (``original``: transformers'
BertForMaskedLM with the original vocab.txt; ``multimolecule``: MultiMolecule's DnaBert) and
``dnabert.models.dnabert2.interop`` (``multimolecule`` only: MultiMolecule's DnaBert2 with the run's BPE
tokenizer), with their imports of released weights. This module reads Lightning checkpoints (pretraining and
fine-tuning), tells the families apart and hands each model to its family's writer.

``python -m dnabert.tools.export <checkpoint.ckpt | run dir> <out dir> [--layout original|multimolecule]
[--tokenizer tokenizer.json]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dnabert.data.tokenizers.kmer import check_k, kmer_text
from dnabert.errors import DnabertError, command_line
from dnabert.models import DEFAULT_FAMILY, build_model
from dnabert.models.dnabert.interop import classifier_writer, export_model
from dnabert.models.dnabert.model import DnaBertForMaskedLM
from dnabert.models.dnabert2.interop import dnabert2_classifier_writer, export_dnabert2_model
from dnabert.models.dnabert2.model import DnaBert2ForMaskedLM
from dnabert.models.interop import (
    COMPILED_PREFIX,
    LAYOUTS,
    card_json_section,
    load_strict,
    plain,
    plain_state_dict,
    prefix_renamed,
    write_replacing,
)
from dnabert.run.checkpoints import read_checkpoint

RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LIGHTNING_MODEL_PREFIX = "model."  # DnaBertForMaskedLM is the attribute `model` of the LightningModule


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, layout: str | None = None, tokenizer_file: str | Path | None = None
) -> Path:
    """Export a Lightning checkpoint (or a run directory's ``checkpoints/last.ckpt``) of pretraining or of
    fine-tuning (finetune.py: a BertForSequenceClassification / DnaBertForSequencePrediction); returns the out dir.

    ``layout`` defaults to the family's first layout ("original" for DNABERT, "multimolecule" for DNABERT-2).
    A DNABERT-2 export needs the run's BPE tokenizer: ``tokenizer_file``, by default ``tokenizer.json`` of the
    run directory (the checkpoint's ``../..``), else the run config's ``tokenizer.file`` (a file or its folder)."""
    if _is_finetune_checkpoint(_checkpoint_file(checkpoint)):
        classifier, backbone, labels = load_classifier_checkpoint(_checkpoint_file(checkpoint))
        return export_classifier(classifier, backbone, labels, out_dir, layout, {"checkpoint": str(checkpoint)})
    model, k, card_config = load_checkpoint(checkpoint)
    if isinstance(model, DnaBert2ForMaskedLM):
        tokenizer_file = tokenizer_file or run_tokenizer(Path(checkpoint), card_config.get("train_config") or {})
        return export_dnabert2_model(model, tokenizer_file, out_dir, layout or "multimolecule", card_config)
    return export_model(model, k, out_dir, layout or "original", card_config)


def run_tokenizer(checkpoint: Path, train_config: dict) -> Path:
    """The BPE tokenizer.json a DNABERT-2 checkpoint (or run directory) was trained with: the run directory's copy,
    else the run config's ``tokenizer.file``."""
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent
    candidates = [run_dir / "tokenizer.json"]
    configured = (train_config.get("tokenizer") or {}).get("file")
    if configured:
        candidates += [Path(configured), Path(configured) / "tokenizer.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DnabertError(
        f"Found no tokenizer for this DNABERT-2 checkpoint (looked for {', '.join(map(str, candidates))}); pass the "
        "tokenizer the model was trained with: --tokenizer PATH."
    )


# --------------------------------------------------------------------------------------- fine-tuned models
# SequenceClassifier parameter names (dnabert.tasks.finetune) -> transformers' BertForSequenceClassification.
CLASSIFIER_RENAMES = (("backbone.bert.", "bert."), ("pooler.", "bert.pooler."), ("classifier.", "classifier."))


def export_classifier(classifier: torch.nn.Module, backbone: dict, labels: Any, out_dir: str | Path,
                      layout: str | None = None, card_config: dict | None = None) -> Path:
    """Write a fine-tuned SequenceClassifier as transformers' ``BertForSequenceClassification`` (original layout,
    DNABERT's default) or MultiMolecule's ``DnaBertForSequencePrediction`` / ``DnaBert2ForSequencePrediction``
    (DNABERT-2's only layout); class names go to the config's id2label.

    ``backbone``: ``{"family", "k", "config", "tokenizer"}`` as fine-tuning stores it; ``labels``: a
    ``LabelSpace``."""
    dnabert2 = backbone["family"] == "dnabert2"
    layout = layout or ("multimolecule" if dnabert2 else "original")
    if layout not in LAYOUTS:
        raise DnabertError(f"Unknown export layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    state_dict = {prefix_renamed(key, CLASSIFIER_RENAMES): value for key, value in plain_state_dict(classifier).items()}
    # Classification leaves problem_type unset: transformers infers it from num_labels (MultiMolecule's config
    # rejects it together with id2label).
    head: dict[str, Any] = {"num_labels": labels.num_outputs}
    if labels.task_type == "classification":
        head["id2label"] = dict(enumerate(labels.names))
        head["label2id"] = {name: index for index, name in enumerate(labels.names)}
    else:
        head["problem_type"] = "regression"
    if dnabert2:
        k, write_model = None, dnabert2_classifier_writer(state_dict, backbone, head, layout)
    else:
        k, write_model = int(backbone["k"]), classifier_writer(state_dict, backbone, head, classifier.dropout.p, layout)

    def write(staging: Path) -> None:
        write_model(staging)
        (staging / "README.md").write_text(_classifier_card(k, layout, labels, card_config))

    return write_replacing(Path(out_dir), write)


def _is_finetune_checkpoint(path: Path) -> bool:
    try:
        hyper_parameters = read_checkpoint(path, mmap=True).get("hyper_parameters", {})
    except Exception:  # unreadable: load_checkpoint reports it with the right message
        return False
    return "task_type" in hyper_parameters and "backbone" in hyper_parameters


def load_classifier_checkpoint(path: Path) -> tuple[torch.nn.Module, dict, Any]:
    """Rebuild a fine-tuned classifier from its Lightning checkpoint: ``(classifier, backbone, labels)``."""
    from dnabert.data.labelled import LabelSpace
    from dnabert.run.finetuning import Backbone, build_encoder
    from dnabert.tasks.finetune import SequenceClassifier

    content = read_checkpoint(path)
    hyper_parameters = plain(content["hyper_parameters"])
    backbone = hyper_parameters["backbone"]
    labels = LabelSpace(hyper_parameters["task_type"], tuple(hyper_parameters.get("labels") or ()))
    encoder = build_encoder(Backbone(backbone["family"], backbone["k"], backbone["config"], None,
                                     backbone.get("source", ""), backbone.get("tokenizer")))
    classifier = SequenceClassifier(encoder, labels.num_outputs)
    state = {key.removeprefix("classifier."): value for key, value in content["state_dict"].items()}
    load_strict(classifier, state, str(path))
    return classifier, backbone, labels


def _classifier_card(k: int | None, layout: str, labels: Any, card_config: dict | None) -> str:
    """k None: DNABERT-2 (BPE)."""
    model_class = ("BertForSequenceClassification" if layout == "original"
                   else f"multimolecule.DnaBert{'' if k else '2'}ForSequencePrediction")
    classes = ", ".join(labels.names) if labels.names else "one regression output"
    if k:
        name, tag = f"DNABERT k={k}", "k-mer"
        tokens = (f"upper-case, space-separated overlapping {k}-mers "
                  f'(e.g. "{kmer_text("GATTACAGATTACA", k)}") with the bundled tokenizer')
    else:
        name, tag = "DNABERT-2", "bpe"
        tokens = 'the upper-case sequence (e.g. "GATTACAGATTACA") with the bundled BPE tokenizer'
    sections = [
        f"---\nlibrary_name: {'transformers' if layout == 'original' else 'multimolecule'}\n"
        f"pipeline_tag: text-classification\ntags:\n- dna\n- dnabert\n- {tag}\n---\n",
        f"# {name}, fine-tuned\n",
        f"A {name.split(' ')[0]} sequence {labels.task_type} model ({model_class}) fine-tuned with the `dnabert` "
        f"framework; outputs: {classes}. Input: {tokens}.\n",
    ]
    if card_config:
        sections.append(card_json_section("Fine-tuning", card_config))
    return "\n".join(sections)


def load_checkpoint(checkpoint: str | Path) -> tuple[DnaBertForMaskedLM | DnaBert2ForMaskedLM, int | None, dict]:
    """Rebuild the model from a Lightning checkpoint: ``(model, k, card_config)``; k is None for DNABERT-2.

    Expects ``state_dict`` keys ``model.<model key>`` (``_orig_mod.`` from torch.compile is ignored) and
    ``hyper_parameters`` with ``model_config`` and optionally ``train_config``; DNABERT (the default family) also
    needs ``k``; DNABERT-2 is ``family: dnabert2`` (or a model_config with DnaBert2Config's ``alibi_starting_size``).
    """
    path = _checkpoint_file(checkpoint)
    try:
        content = read_checkpoint(path)
    except Exception as err:  # any unpickling failure means the same to the user: not a usable file
        raise DnabertError(f"Cannot read checkpoint {path} ({err}); is it a complete Lightning .ckpt file?") from err
    if not isinstance(content, dict) or "state_dict" not in content or "hyper_parameters" not in content:
        raise DnabertError(f"{path} is not a dnabert Lightning checkpoint (no state_dict/hyper_parameters).")
    hyper_parameters = plain(content["hyper_parameters"])
    model_config = hyper_parameters.get("model_config") or {}
    dnabert2 = hyper_parameters.get("family", "dnabert") == "dnabert2" or "alibi_starting_size" in model_config
    missing = [name for name in ("model_config",) + (() if dnabert2 else ("k",)) if name not in hyper_parameters]
    if missing:
        raise DnabertError(f"Checkpoint {path} has no hyper-parameter(s) {missing}; it was not written by dnabert.")
    k = None if dnabert2 else check_k(int(hyper_parameters["k"]))
    model = build_model("dnabert2" if dnabert2 else DEFAULT_FAMILY, model_config)
    model_state = {
        key.removeprefix(LIGHTNING_MODEL_PREFIX): value
        for key, value in ((key.replace(COMPILED_PREFIX, ""), value) for key, value in content["state_dict"].items())
        if key.startswith(LIGHTNING_MODEL_PREFIX)
    }
    load_strict(model, model_state, str(path))
    card_config = {
        "checkpoint": path.name,
        "global_step": content.get("global_step"),
        "epoch": content.get("epoch"),
        "train_config": hyper_parameters.get("train_config"),
    }
    return model, k, card_config


def _checkpoint_file(checkpoint: str | Path) -> Path:
    """A .ckpt file, or a run directory's checkpoints/last.ckpt."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / RUN_DIR_CHECKPOINT
    if not path.is_file():
        raise DnabertError(f"Checkpoint {path} does not exist; pass a .ckpt file or a run directory with one.")
    return path


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
