"""Saved models read back and written out, for the run machinery and the export command: a pretraining or
fine-tuning Lightning checkpoint -> its model (``load_checkpoint``, ``load_classifier_checkpoint``), the BPE
tokenizer a run was trained with (``run_tokenizer``), and a fine-tuned classifier -> its family's export layout
with a model card (``export_classifier``). The families' own layouts live with them (dnabert.models.<family>.
interop, reached through ``dnabert.models.get_family``); dnabert.tools.export is the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dnabert.data.labelled import LabelSpace
from dnabert.data.tokenizers.kmer import check_k
from dnabert.errors import DnabertError
from dnabert.models import build_model, family_of_checkpoint, get_family
from dnabert.models.family import ClassifierCard, ModelFamily
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
from dnabert.run.adapters import add_lora, merged
from dnabert.run.checkpoints import read_checkpoint
from dnabert.tasks.finetune import SequenceClassifier

RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LIGHTNING_MODEL_PREFIX = "model."  # the masked-LM model is the attribute `model` of the LightningModule


def run_tokenizer(checkpoint: Path, train_config: dict) -> Path:
    """The BPE tokenizer.json a BPE checkpoint (or run directory) was trained with: the run directory's copy,
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
        f"Found no tokenizer for this BPE checkpoint (looked for {', '.join(map(str, candidates))}); pass the "
        "tokenizer the model was trained with: --tokenizer PATH."
    )


# --------------------------------------------------------------------------------------- fine-tuned models
# SequenceClassifier parameter names (dnabert.tasks.finetune) -> transformers' BertForSequenceClassification.
CLASSIFIER_RENAMES = (("backbone.bert.", "bert."), ("pooler.", "bert.pooler."), ("classifier.", "classifier."))


def export_classifier(classifier: torch.nn.Module, backbone: dict, labels: Any, out_dir: str | Path,
                      layout: str | None = None, card_config: dict | None = None) -> Path:
    """Write a fine-tuned SequenceClassifier with its family's classifier writer (``layout`` None: the family's
    default; DNABERT: transformers' ``BertForSequenceClassification`` or MultiMolecule's
    ``DnaBertForSequencePrediction``); class names go to the config's id2label.

    ``backbone``: ``{"family", "k", "config", "tokenizer"}`` as fine-tuning stores it; ``labels``: a
    ``LabelSpace``."""
    family = get_family(backbone["family"])
    known_layouts = tuple(dict.fromkeys((*LAYOUTS, *family.layouts)))
    if layout is not None and layout not in known_layouts:
        raise DnabertError(f"Unknown export layout {layout!r}; use one of {', '.join(known_layouts)}.")
    state_dict = {prefix_renamed(key, CLASSIFIER_RENAMES): value for key, value in plain_state_dict(classifier).items()}
    # Classification leaves problem_type unset: transformers infers it from num_labels (MultiMolecule's config
    # rejects it together with id2label).
    head: dict[str, Any] = {"num_labels": labels.num_outputs}
    if labels.task_type == "classification":
        head["id2label"] = dict(enumerate(labels.names))
        head["label2id"] = {name: index for index, name in enumerate(labels.names)}
    else:
        head["problem_type"] = "regression"
    write_model = family.classifier_writer(state_dict, backbone, head, classifier.dropout.p, layout)
    card = family.classifier_card(backbone["k"], layout)

    def write(staging: Path) -> None:
        write_model(staging)
        (staging / "README.md").write_text(_classifier_card(card, layout or family.layouts[0], labels,
                                                            card_config))

    return write_replacing(Path(out_dir), write)


def load_classifier_checkpoint(path: Path) -> tuple[torch.nn.Module, dict, Any]:
    """Rebuild a fine-tuned classifier from its Lightning checkpoint: ``(classifier, backbone, labels)``; a LoRA
    run's comes back with its adapter merged into the weights (a plain classifier, as exports need)."""
    content = read_checkpoint(path)
    hyper_parameters = plain(content["hyper_parameters"])
    backbone = hyper_parameters["backbone"]
    labels = LabelSpace(hyper_parameters["task_type"], tuple(hyper_parameters.get("labels") or ()))
    encoder = get_family(backbone["family"]).build_encoder(backbone["config"])
    classifier = SequenceClassifier(encoder, labels.num_outputs)
    adapter = hyper_parameters.get("adapter")
    if adapter:
        add_lora(classifier, backbone["family"], adapter)
    state = {key.removeprefix("classifier."): value for key, value in content["state_dict"].items()}
    load_strict(classifier, state, str(path))
    return (merged(classifier) if adapter else classifier), backbone, labels


# The reverse of CLASSIFIER_RENAMES (the pooler's prefix before the backbone's, which contains it).
CLASSIFIER_IMPORT_RENAMES = (("bert.pooler.", "pooler."), ("bert.", "backbone.bert."), ("classifier.", "classifier."))


def load_classifier_directory(directory: Path, family: ModelFamily) -> tuple[torch.nn.Module, dict, Any]:
    """Rebuild a fine-tuned classifier from its export (``export_classifier``'s folder, e.g. a seed's hf_model/):
    ``(classifier, backbone, labels)`` as ``load_classifier_checkpoint`` gives them."""
    backbone, state_dict, head = family.import_classifier(Path(directory))
    if head.get("problem_type") == "regression":
        labels = LabelSpace("regression")
    else:
        labels = LabelSpace("classification", tuple(head["id2label"][index] for index in sorted(head["id2label"])))
    classifier = SequenceClassifier(family.build_encoder(backbone["config"]), labels.num_outputs)
    load_strict(classifier, {prefix_renamed(key, CLASSIFIER_IMPORT_RENAMES): value
                             for key, value in state_dict.items()}, str(directory))
    return classifier, backbone, labels


def _classifier_card(card: ClassifierCard, layout: str, labels: LabelSpace, card_config: dict | None) -> str:
    classes = ", ".join(labels.names) if labels.names else "one regression output"
    sections = [
        f"---\nlibrary_name: {'transformers' if layout == 'original' else 'multimolecule'}\n"
        f"pipeline_tag: text-classification\ntags:\n- dna\n- dnabert\n- {card.tag}\n---\n",
        f"# {card.name}, fine-tuned\n",
        f"A {card.name.split(' ')[0]} sequence {labels.task_type} model ({card.model_class}) fine-tuned with the "
        f"`dnabert` framework; outputs: {classes}. Input: {card.tokens}.\n",
    ]
    if card_config:
        sections.append(card_json_section("Fine-tuning", card_config))
    return "\n".join(sections)


def load_checkpoint(checkpoint: str | Path) -> tuple[torch.nn.Module, int | None, dict]:
    """Rebuild the masked-LM model from a Lightning checkpoint: ``(model, k, card_config)``; k is None for a BPE
    family (DNABERT-2).

    Expects ``state_dict`` keys ``model.<model key>`` (``_orig_mod.`` from torch.compile is ignored) and
    ``hyper_parameters`` with ``model_config``, ``family`` (dnabert.models.family_of_checkpoint for older ones) and
    optionally ``train_config``; a k-mer family also needs ``k``.
    """
    path = checkpoint_file(checkpoint)
    try:
        content = read_checkpoint(path)
    except Exception as err:  # any unpickling failure means the same to the user: not a usable file
        # torch's messages run over many lines (the weights-only advice); the type says enough for one line
        raise DnabertError(f"Cannot read checkpoint {path} ({type(err).__name__}); is it a complete Lightning .ckpt "
                           "file?") from err
    if not isinstance(content, dict) or "state_dict" not in content or "hyper_parameters" not in content:
        raise DnabertError(f"{path} is not a dnabert Lightning checkpoint (no state_dict/hyper_parameters).")
    hyper_parameters = plain(content["hyper_parameters"])
    model_config = hyper_parameters.get("model_config") or {}
    family_name = family_of_checkpoint(hyper_parameters)
    kmer = get_family(family_name).tokenizer == "kmer"
    missing = [name for name in ("model_config",) + (("k",) if kmer else ()) if name not in hyper_parameters]
    if missing:
        raise DnabertError(f"Checkpoint {path} has no hyper-parameter(s) {missing}; it was not written by dnabert.")
    k = check_k(int(hyper_parameters["k"])) if kmer else None
    model = build_model(family_name, model_config)
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


def checkpoint_file(checkpoint: str | Path) -> Path:
    """A .ckpt file, or a run directory's checkpoints/last.ckpt."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / RUN_DIR_CHECKPOINT
    if not path.is_file():
        raise DnabertError(f"Checkpoint {path} does not exist; pass a .ckpt file or a run directory with one.")
    return path


def is_finetune_checkpoint(path: Path) -> bool:
    try:
        hyper_parameters = read_checkpoint(path, mmap=True).get("hyper_parameters", {})
    except Exception:  # unreadable: load_checkpoint reports it with the right message
        return False
    return "task_type" in hyper_parameters and "backbone" in hyper_parameters
