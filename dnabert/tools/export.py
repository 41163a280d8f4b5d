"""Export a trained model as a directory that transformers (or MultiMolecule) loads, and import released ones.

Layouts:

- ``original``: what the released DNABERT checkpoints look like: ``BertForMaskedLM`` weights (config.json,
  model.safetensors), the original vocab.txt (ATCG k-mer order) and a ``BertTokenizer`` configured with
  ``do_lower_case=False`` (the original's lower-casing turned every k-mer into [UNK]).
- ``multimolecule``: the same weights in the layout of the ``multimolecule`` package (``model_type: dnabert``):
  parameter names renamed and the vocabulary rows permuted into its order (``<pad> <cls> <eos> <unk> <mask>
  <null>`` then k-mers in ACGT order). ``<null>`` has no counterpart in DNABERT: it gets a copy of [UNK]'s
  embedding and output bias, so it behaves exactly like ``<unk>``. This layout is written with MultiMolecule's own
  classes, so the files follow the installed version of that package; it must be installed to use the layout.

DNABERT-2 (``dnabert.models.dnabert2``) has one export layout, ``multimolecule`` (its ``DnaBert2ForMaskedLM``,
``model_type: dnabert2``): the original checkpoint's names renamed (``Wqkv`` split into query/key/value), the BPE
``tokenizer.json`` of the run as a ``PreTrainedTokenizerFast`` with its own special tokens and ids. Import
(``init_from_dnabert2``, ``load_dnabert2_into``) reads that layout and the original release's
(``bert.*``/``cls.predictions.*`` keys, ``config.json`` with BERT's field names, as zhihan1996/DNABERT-2-117M).

``python -m dnabert.tools.export <checkpoint.ckpt | run dir> <out dir> [--layout original|multimolecule]
[--tokenizer tokenizer.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from dnabert.data.tokenizers.bpe import bpe_file
from dnabert.data.tokenizers.kmer import SPECIAL_TOKENS, check_k, kmer_text, vocab_size, vocab_tokens, write_vocab
from dnabert.errors import DnabertError, command_line
from dnabert.models import DEFAULT_FAMILY, build_model
from dnabert.models.dnabert.model import DnaBertForMaskedLM, ModelConfig
from dnabert.models.dnabert2.model import DnaBert2Config, DnaBert2ForMaskedLM
from dnabert.run.checkpoints import read_checkpoint

LAYOUTS = ("original", "multimolecule")
RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LIGHTNING_MODEL_PREFIX = "model."  # DnaBertForMaskedLM is the attribute `model` of the LightningModule
COMPILED_PREFIX = "_orig_mod."  # what torch.compile adds to state_dict keys (stack.md, trap 3)

# MultiMolecule's special tokens -> the DNABERT token whose weights they take.
MULTIMOLECULE_SPECIALS = {
    "<pad>": "[PAD]",
    "<cls>": "[CLS]",
    "<eos>": "[SEP]",
    "<unk>": "[UNK]",
    "<mask>": "[MASK]",
    "<null>": "[UNK]",
}
# Parameter-name rewrites from transformers' BERT to MultiMolecule's DnaBert, applied in this order.
MULTIMOLECULE_RENAMES = (("bert.", "model."), ("cls.predictions.", "lm_head."))
VOCAB_ROW_KEYS = (
    "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.predictions.bias",
)


# DNABERT-2 names, ours (= the original checkpoint's) -> MultiMolecule's. Prefixes apply at the start of a key,
# infixes anywhere, in this order; the reverse swaps each pair and keeps the order (so ".mlp.layer_norm." becomes
# ".mlp.layernorm." before the other layer_norms become LayerNorm).
DNABERT2_PREFIXES = (("bert.", "model."), ("cls.predictions.", "lm_head."))
DNABERT2_INFIXES = (
    (".mlp.layernorm.", ".mlp.layer_norm."),
    ("LayerNorm", "layer_norm"),
    (".mlp.gated_layers.", ".mlp.up_proj."),
    (".mlp.wo.", ".mlp.down_proj."),
)
DNABERT2_FUSED_QKV = ".attention.self.Wqkv."
DNABERT2_SPLIT_QKV = (".attention.self.query.", ".attention.self.key.", ".attention.self.value.")
# The published DNABERT-2 tokenizer's special tokens, under the argument names transformers gives them.
DNABERT2_SPECIAL_TOKENS = {
    "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"
}
# Token names for [PAD]/[CLS] in an imported directory: the original's, and MultiMolecule's after its conversion.
DNABERT2_PAD_NAMES, DNABERT2_CLS_NAMES = ("[PAD]", "<pad>"), ("[CLS]", "<cls>")
DNABERT2_POOLER_PREFIX = "bert.pooler."  # in some releases; the MLM model has no pooler
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def export_model(
    model: DnaBertForMaskedLM,
    k: int,
    out_dir: str | Path,
    layout: str = "original",
    card_config: dict | None = None,
) -> Path:
    """Write ``model`` (possibly wrapped by torch.compile) as a loadable directory; returns its path.

    ``card_config`` (e.g. the training config) is printed in the README model card. An existing export at
    ``out_dir`` is replaced; a non-empty directory that is not an export is refused, never deleted.
    """
    if layout not in LAYOUTS:
        raise DnabertError(f"Unknown export layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    config: ModelConfig = model.config
    if config.vocab_size != vocab_size(k):
        raise DnabertError(
            f"The model has {config.vocab_size} vocabulary rows but k={k} needs {vocab_size(k)} (4^k + 5); "
            "pass the k the model was trained with."
        )
    state_dict = _plain_state_dict(model)
    writer = _write_original if layout == "original" else _write_multimolecule

    def write(staging: Path) -> None:
        writer(state_dict, config, k, staging)
        (staging / "README.md").write_text(_model_card(config, k, layout, card_config))

    return _write_replacing(Path(out_dir), write)


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU tensors under the model's own names, whether or not torch.compile wrapped it."""
    return {key.replace(COMPILED_PREFIX, ""): value.detach().cpu() for key, value in model.state_dict().items()}


def _write_replacing(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging_dir)`` and move the result to ``out_dir`` only once it is complete, replacing an earlier
    export there; a non-empty directory that is not an export is refused, never deleted."""
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with _no_progress_bars():
            write(staging)
        _follow_umask(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _follow_umask(root: Path) -> None:
    """mkdtemp makes the staging folder 0700 (and the weights file came out 0600): give every file of the export
    the mode the user's umask gives anything else the run writes, so colleagues on a shared filesystem can load
    the model."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a "Writing model shards" bar for a one-file save; it only clutters the run's log."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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
        tokenizer_file = tokenizer_file or _run_tokenizer(Path(checkpoint), card_config.get("train_config") or {})
        return export_dnabert2_model(model, tokenizer_file, out_dir, layout or "multimolecule", card_config)
    return export_model(model, k, out_dir, layout or "original", card_config)


def _run_tokenizer(checkpoint: Path, train_config: dict) -> Path:
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
# ... and transformers' classification head -> MultiMolecule's DnaBertForSequencePrediction (after its BERT renames).
MULTIMOLECULE_HEAD_RENAMES = (("classifier.", "sequence_head.decoder."),)


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
    state_dict = {_renamed(key, CLASSIFIER_RENAMES): value for key, value in _plain_state_dict(classifier).items()}
    # Classification leaves problem_type unset: transformers infers it from num_labels (MultiMolecule's config
    # rejects it together with id2label).
    head: dict[str, Any] = {"num_labels": labels.num_outputs}
    if labels.task_type == "classification":
        head["id2label"] = dict(enumerate(labels.names))
        head["label2id"] = {name: index for index, name in enumerate(labels.names)}
    else:
        head["problem_type"] = "regression"
    if dnabert2:
        return _export_dnabert2_classifier(state_dict, backbone, labels, head, Path(out_dir), layout, card_config)
    k, config = int(backbone["k"]), ModelConfig.from_dict(backbone["config"])

    def write(staging: Path) -> None:
        if layout == "original":
            hf_config = config.to_hf_config()
            for key, value in {**head, "classifier_dropout": classifier.dropout.p}.items():
                setattr(hf_config, key, value)
            model = BertForSequenceClassification(hf_config)
            _load_strict(model, state_dict, "the fine-tuned model")
            model.save_pretrained(staging)
            _write_bert_tokenizer(config, k, staging)
        else:
            multimolecule, tokenizer = _multimolecule_tokenizer(config, k)
            rows = multimolecule_rows(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), k)
            renamed = {_renamed(key, MULTIMOLECULE_HEAD_RENAMES): value
                       for key, value in _multimolecule_state(state_dict, rows).items()}
            model = multimolecule.DnaBertForSequencePrediction(
                _multimolecule_config(multimolecule, config, len(rows), **head))
            _load_strict(model, renamed, "the fine-tuned model")
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(_classifier_card(k, layout, labels, card_config))

    return _write_replacing(Path(out_dir), write)


def _export_dnabert2_classifier(state_dict: dict, backbone: dict, labels: Any, head: dict, out_dir: Path, layout: str,
                                card_config: dict | None) -> Path:
    """A fine-tuned DNABERT-2 classifier (state under transformers' BERT names) as MultiMolecule's
    ``DnaBert2ForSequencePrediction`` with the backbone's BPE tokenizer: the pooler and head are BERT's, as in
    MultiMolecule, so the logits are equal."""
    if layout != "multimolecule":
        raise DnabertError(
            f"Fine-tuned DNABERT-2 models export in the multimolecule layout only (--layout multimolecule), not "
            f"{layout!r}: transformers has no DNABERT-2 class, and the original release needs its own remote code."
        )
    config = DnaBert2Config.from_dict(backbone["config"])
    tokenizer = dnabert2_tokenizer(bpe_file(backbone["tokenizer"]), config)
    renamed = {_renamed(key, MULTIMOLECULE_HEAD_RENAMES): value
               for key, value in dnabert2_to_multimolecule(state_dict, config.hidden_size).items()}

    def write(staging: Path) -> None:
        _write_multimolecule_dnabert2(renamed, config, tokenizer, staging, head)
        (staging / "README.md").write_text(_classifier_card(None, layout, labels, card_config))

    return _write_replacing(out_dir, write)


def _renamed(key: str, renames: Sequence[tuple[str, str]]) -> str:
    """`key` with the first matching prefix replaced."""
    for old, new in renames:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


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
    hyper_parameters = _plain(content["hyper_parameters"])
    backbone = hyper_parameters["backbone"]
    labels = LabelSpace(hyper_parameters["task_type"], tuple(hyper_parameters.get("labels") or ()))
    encoder = build_encoder(Backbone(backbone["family"], backbone["k"], backbone["config"], None,
                                     backbone.get("source", ""), backbone.get("tokenizer")))
    classifier = SequenceClassifier(encoder, labels.num_outputs)
    state = {key.removeprefix("classifier."): value for key, value in content["state_dict"].items()}
    _load_strict(classifier, state, str(path))
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
        sections.append(f"## Fine-tuning\n\n```json\n{json.dumps(_plain(card_config), indent=2, default=str)}\n```\n")
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
    hyper_parameters = _plain(content["hyper_parameters"])
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
    _load_strict(model, model_state, str(path))
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


def init_from(hf_dir: str | Path, k: int) -> DnaBertForMaskedLM:
    """A model initialised from a ``BertForMaskedLM`` directory in the original DNABERT layout (e.g. released
    DNABERT weights), to continue pretraining; its architecture comes from the directory's config.json."""
    reference = _load_original_layout(hf_dir, k)
    model = DnaBertForMaskedLM(ModelConfig.from_hf_config(reference.config))
    _load_strict(model, reference.state_dict(), str(hf_dir))
    return model


def load_pretrained_into(model: DnaBertForMaskedLM, hf_dir: str | Path, k: int) -> None:
    """Copy the weights of a DNABERT-layout directory into an existing model of the same architecture."""
    _load_strict(model, _load_original_layout(hf_dir, k).state_dict(), str(hf_dir))


def _load_original_layout(hf_dir: str | Path, k: int) -> BertForMaskedLM:
    directory = Path(hf_dir)
    if not (directory / "config.json").is_file():
        raise DnabertError(f"{directory} has no config.json; pass a directory saved by transformers' save_pretrained.")
    check_k(k)
    vocab_file = directory / "vocab.txt"
    if vocab_file.is_file() and vocab_file.read_text().split() != vocab_tokens(k):
        raise DnabertError(
            f"{vocab_file} is not the DNABERT vocabulary for k={k} (ATCG k-mer order); check k, or convert a "
            "model with another vocabulary order first."
        )
    try:
        reference, info = BertForMaskedLM.from_pretrained(directory, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise DnabertError(f"Cannot load {directory} as a BertForMaskedLM ({err}).") from err
    if info["missing_keys"] or info["mismatched_keys"]:
        raise DnabertError(
            f"{directory} lacks masked-LM weights {sorted(info['missing_keys'])[:5]} or has mismatched shapes "
            f"{[key for key, *_ in info['mismatched_keys']][:5]}; it must be a BertForMaskedLM checkpoint."
        )
    if reference.config.vocab_size != vocab_size(k):
        raise DnabertError(
            f"{directory} has {reference.config.vocab_size} vocabulary rows but k={k} needs {vocab_size(k)} "
            "(4^k + 5); set k to the model's k."
        )
    return reference


def _load_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise DnabertError(f"The weights in {source} do not fit the model configuration: {err}") from err


def _write_original(state_dict: dict, config: ModelConfig, k: int, out_dir: Path) -> None:
    model = BertForMaskedLM(config.to_hf_config())
    _load_strict(model, state_dict, "the model")
    model.save_pretrained(out_dir)
    _write_bert_tokenizer(config, k, out_dir)


def _write_bert_tokenizer(config: ModelConfig, k: int, out_dir: Path) -> None:
    """The original vocab.txt and a BertTokenizer that does not lower-case (the original's did)."""
    vocab_file = write_vocab(k, out_dir / "vocab.txt")
    tokenizer = BertTokenizer(
        str(vocab_file), do_lower_case=False, model_max_length=config.max_position_embeddings
    )
    tokenizer.save_pretrained(out_dir)
    write_vocab(k, vocab_file)  # the canonical file, whatever the tokenizer wrote back
    names = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
    special_tokens = {name: getattr(tokenizer, name) for name in names}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n")


def _write_multimolecule(state_dict: dict, config: ModelConfig, k: int, out_dir: Path) -> None:
    multimolecule, tokenizer = _multimolecule_tokenizer(config, k)
    rows = multimolecule_rows(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), k)
    model = multimolecule.DnaBertForMaskedLM(_multimolecule_config(multimolecule, config, len(rows)))
    _load_strict(model, _multimolecule_state(state_dict, rows), "the model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _multimolecule_tokenizer(config: ModelConfig, k: int) -> tuple[Any, Any]:
    """The multimolecule module (imported only for this layout) and its k-mer tokenizer."""
    try:
        import multimolecule
    except ImportError as err:
        raise DnabertError("--layout multimolecule needs the multimolecule package: pip install multimolecule") from err
    return multimolecule, multimolecule.DnaTokenizer(
        nmers=k, alphabet="nucleobase", model_max_length=config.max_position_embeddings
    )


def _multimolecule_state(state_dict: dict, rows: torch.Tensor) -> dict:
    """transformers BERT names -> MultiMolecule's, vocabulary rows permuted into its token order."""
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in MULTIMOLECULE_RENAMES:
            new_key = new_key.replace(old, new, 1) if new_key.startswith(old) else new_key
        renamed[new_key.replace("LayerNorm", "layer_norm")] = value[rows] if key in VOCAB_ROW_KEYS else value
    return renamed


def _multimolecule_config(multimolecule: Any, config: ModelConfig, vocab_rows: int, **extra: Any) -> Any:
    return multimolecule.DnaBertConfig(
        vocab_size=vocab_rows,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        **extra,
    )


def multimolecule_rows(multimolecule_tokens: Sequence[str], k: int) -> torch.Tensor:
    """For each MultiMolecule token (in its id order), the id of the DNABERT token whose weights it takes."""
    dnabert_ids = {token: index for index, token in enumerate(vocab_tokens(k))}
    try:
        return torch.tensor([dnabert_ids[MULTIMOLECULE_SPECIALS.get(token, token)] for token in multimolecule_tokens])
    except KeyError as err:
        raise DnabertError(
            f"MultiMolecule's {k}-mer vocabulary has token {err} that DNABERT lacks; this multimolecule version "
            "is not supported for export (0.2.2 is)."
        ) from err


# ------------------------------------------------------------------------------------------------- DNABERT-2
def export_dnabert2_model(
    model: DnaBert2ForMaskedLM,
    tokenizer_file: str | Path,
    out_dir: str | Path,
    layout: str = "multimolecule",
    card_config: dict | None = None,
) -> Path:
    """Write a DNABERT-2 model (possibly compiled) and its BPE tokenizer as a MultiMolecule directory.

    The tokenizer must be the one the model was trained with: its size may not exceed the model's vocabulary and
    its [PAD]/[CLS] ids must be the model's. Replaces an earlier export at ``out_dir`` like ``export_model``.
    """
    if layout != "multimolecule":
        raise DnabertError(
            f"DNABERT-2 models export in the multimolecule layout only (--layout multimolecule), not {layout!r}: "
            "the original release needs its own remote code, which transformers' BERT does not replace."
        )
    config: DnaBert2Config = model.config
    tokenizer = dnabert2_tokenizer(tokenizer_file, config)
    state_dict = dnabert2_to_multimolecule(_plain_state_dict(model), config.hidden_size)

    def write(staging: Path) -> None:
        _write_multimolecule_dnabert2(state_dict, config, tokenizer, staging)
        (staging / "README.md").write_text(_dnabert2_model_card(config, card_config))

    return _write_replacing(Path(out_dir), write)


def dnabert2_tokenizer(tokenizer_file: str | Path, config: DnaBert2Config) -> PreTrainedTokenizerFast:
    """The run's ``tokenizer.json`` as a transformers tokenizer, checked against the model's vocabulary."""
    path = Path(tokenizer_file)
    if not path.is_file():
        raise DnabertError(f"Tokenizer {path} does not exist; pass the run's tokenizer.json (--tokenizer PATH).")
    try:
        raw = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for any malformed file
        raise DnabertError(f"Cannot read {path} as a tokenizers JSON file ({err}).") from err
    missing = [token for token in DNABERT2_SPECIAL_TOKENS.values() if raw.token_to_id(token) is None]
    if missing:
        raise DnabertError(
            f"{path} lacks the special token(s) {missing}; a DNABERT-2 tokenizer has "
            f"{' '.join(DNABERT2_SPECIAL_TOKENS.values())}."
        )
    size = raw.get_vocab_size(with_added_tokens=True)
    ids = {"pad_token_id": raw.token_to_id("[PAD]"), "cls_token_id": raw.token_to_id("[CLS]")}
    if size > config.vocab_size or any(getattr(config, name) != value for name, value in ids.items()):
        raise DnabertError(
            f"{path} ({size} tokens, {ids}) is not the model's tokenizer (vocabulary {config.vocab_size}, "
            f"pad_token_id={config.pad_token_id}, cls_token_id={config.cls_token_id}); pass the run's tokenizer.json."
        )
    return PreTrainedTokenizerFast(tokenizer_object=raw, **DNABERT2_SPECIAL_TOKENS)


def dnabert2_to_multimolecule(state_dict: dict[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor]:
    """Our (the original checkpoint's) names to MultiMolecule's: Wqkv split in three, renames, the decoder bias
    also as ``lm_head.bias`` (MultiMolecule ties the two)."""
    renamed = {}
    for key, value in state_dict.items():
        if DNABERT2_FUSED_QKV in key:
            for part, piece in zip(DNABERT2_SPLIT_QKV, value.split(hidden_size), strict=True):
                renamed[_dnabert2_rename(key.replace(DNABERT2_FUSED_QKV, part))] = piece
        else:
            renamed[_dnabert2_rename(key)] = value
    if "lm_head.decoder.bias" in renamed:  # a fine-tuned classifier has no MLM head
        renamed["lm_head.bias"] = renamed["lm_head.decoder.bias"]
    return renamed


def dnabert2_from_multimolecule(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``dnabert2_to_multimolecule``: MultiMolecule's names to ours, query/key/value fused."""
    state_dict = dict(state_dict)
    bias = state_dict.pop("lm_head.bias", None)
    if bias is not None:
        state_dict.setdefault("lm_head.decoder.bias", bias)
    query, *key_and_value = DNABERT2_SPLIT_QKV
    renamed = {}
    for name, value in state_dict.items():
        if any(part in name for part in key_and_value):
            continue  # fused with the query below
        if query in name:
            value = torch.cat([state_dict[name.replace(query, part)] for part in DNABERT2_SPLIT_QKV])
            name = name.replace(query, DNABERT2_FUSED_QKV)
        renamed[_dnabert2_rename(name, reverse=True)] = value
    return renamed


def _dnabert2_rename(key: str, reverse: bool = False) -> str:
    for old, new in DNABERT2_PREFIXES:
        old, new = (new, old) if reverse else (old, new)
        if key.startswith(old):
            key = new + key.removeprefix(old)
    for old, new in DNABERT2_INFIXES:
        key = key.replace(*((new, old) if reverse else (old, new)))
    return key


def _write_multimolecule_dnabert2(
    state_dict: dict, config: DnaBert2Config, tokenizer: PreTrainedTokenizerFast, out_dir: Path,
    head: dict | None = None,
) -> None:
    """MultiMolecule's DnaBert2ForMaskedLM, or with ``head`` (num_labels, id2label ...) its
    DnaBert2ForSequencePrediction."""
    try:
        import multimolecule
    except ImportError as err:
        raise DnabertError("--layout multimolecule needs the multimolecule package: pip install multimolecule") from err
    mm_config = multimolecule.DnaBert2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        alibi_starting_size=config.alibi_starting_size,
        # MultiMolecule's names for the special ids: its default attention mask is input_ids != pad_token_id
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        unk_token_id=tokenizer.unk_token_id,
        mask_token_id=tokenizer.mask_token_id,
        null_token_id=None,
        **(head or {}),
    )
    model_class = multimolecule.DnaBert2ForSequencePrediction if head else multimolecule.DnaBert2ForMaskedLM
    model = model_class(mm_config)
    _load_strict(model, state_dict, "the model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def init_from_dnabert2(directory: str | Path) -> DnaBert2ForMaskedLM:
    """A DNABERT-2 model initialised from a MultiMolecule export or an original-layout directory (released
    weights), to continue pretraining; its architecture comes from the directory's config.json, its [PAD]/[CLS]
    ids from the directory's tokenizer.json (else the config, else the published ids)."""
    config, state_dict = _read_dnabert2_directory(directory)
    model = DnaBert2ForMaskedLM(config)
    _load_strict(model, state_dict, str(directory))
    return model


def load_dnabert2_into(model: DnaBert2ForMaskedLM, directory: str | Path) -> None:
    """Copy the weights of a DNABERT-2 directory (either layout) into an existing model of the same shape
    (``model.init_from`` for the dnabert2 family)."""
    _load_strict(model, _read_dnabert2_directory(directory)[1], str(directory))


def _read_dnabert2_directory(directory: str | Path) -> tuple[DnaBert2Config, dict[str, torch.Tensor]]:
    """(config, state dict under our names) of a MultiMolecule (model_type dnabert2) or original directory."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise DnabertError(
            f"{directory} has no config.json; pass a DNABERT-2 directory (a MultiMolecule export, or the original "
            "release's files: config.json and pytorch_model.bin or model.safetensors)."
        )
    values = json.loads(config_file.read_text())
    weights = _read_weights(directory)
    fields = {field.name for field in dataclasses.fields(DnaBert2Config)}
    if values.get("model_type") == "dnabert2":  # MultiMolecule
        renamed = {"hidden_dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob",
                   "bos_token_id": "cls_token_id"}
        config_values = {renamed.get(name, name): value for name, value in values.items()}
        state_dict = dnabert2_from_multimolecule(weights)
    else:  # the original: BERT's field names; its pad_token_id is BertConfig's default 0, not the tokenizer's
        config_values = {name: value for name, value in values.items() if name != "pad_token_id"}
        state_dict = {key: value for key, value in weights.items() if not key.startswith(DNABERT2_POOLER_PREFIX)}
        if "cls.predictions.bias" in state_dict:  # transformers' duplicate of the decoder bias
            state_dict.setdefault("cls.predictions.decoder.bias", state_dict.pop("cls.predictions.bias"))
    state_dict.setdefault("cls.predictions.decoder.weight", state_dict.get("bert.embeddings.word_embeddings.weight"))
    config_values = {name: value for name, value in config_values.items() if name in fields}
    config_values.update(_dnabert2_special_ids(directory))
    return DnaBert2Config.from_dict(config_values), state_dict


def _dnabert2_special_ids(directory: Path) -> dict[str, int]:
    """[PAD]/[CLS] ids from the directory's tokenizer.json, under either naming; none without one."""
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        return {}
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    ids = {}
    for field, names in (("pad_token_id", DNABERT2_PAD_NAMES), ("cls_token_id", DNABERT2_CLS_NAMES)):
        found = [tokenizer.token_to_id(name) for name in names if tokenizer.token_to_id(name) is not None]
        if found:
            ids[field] = found[0]
    return ids


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            try:
                return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
            except Exception as err:  # any decoding failure means the same to the user: not a usable file
                raise DnabertError(f"Cannot read weights {path} ({err}).") from err
    raise DnabertError(f"{directory} has no weights file ({' or '.join(WEIGHT_FILES)}).")


def _dnabert2_model_card(config: DnaBert2Config, card_config: dict | None) -> str:
    usage = (
        "import multimolecule  # registers DnaBert2 with transformers\n"
        "from transformers import AutoTokenizer, pipeline\n\n"
        "tokenizer = AutoTokenizer.from_pretrained(path)\n"
        "model = multimolecule.DnaBert2ForMaskedLM.from_pretrained(path)\n"
        'unmasker = pipeline("fill-mask", model=path)  # e.g. unmasker("ACGTAGCATCG[MASK]ATCGTAGC")'
    )
    sections = [
        "---\nlibrary_name: multimolecule\npipeline_tag: fill-mask\ntags:\n- dna\n- dnabert2\n- bpe\n---\n",
        "# DNABERT-2\n",
        "A MosaicBERT-style masked-language model (ALiBi, gated linear units) over a BPE vocabulary of DNA, "
        "pretrained with the `dnabert` framework following the DNABERT-2 recipe (Zhou et al., ICLR 2024).\n",
        f"## Usage\n\n```python\n{usage}\n```\n",
        f"## Vocabulary\n\nThe run's BPE tokenizer ({config.vocab_size} rows), special tokens "
        f"{' '.join(DNABERT2_SPECIAL_TOKENS.values())} as trained.\n",
        f"## Model configuration (dnabert's)\n\n```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n",
    ]
    if card_config:
        sections.append(f"## Training\n\n```json\n{json.dumps(_plain(card_config), indent=2, default=str)}\n```\n")
    return "\n".join(sections)


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file()
    ):
        raise DnabertError(
            f"{out_dir} exists and is not an earlier export; choose a new output directory."
        )


def _plain(value: object) -> object:
    """OmegaConf containers (from Hydra configs in hyper-parameters) as plain dicts/lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _model_card(config: ModelConfig, k: int, layout: str, card_config: dict | None) -> str:
    if layout == "original":
        library, usage = "transformers", (
            "from transformers import BertForMaskedLM, BertTokenizer\n\n"
            "tokenizer = BertTokenizer.from_pretrained(path)\n"
            "model = BertForMaskedLM.from_pretrained(path)\n"
            f'# input: upper-case, space-separated overlapping {k}-mers, e.g. "{kmer_text("GATTACAGATTACA", k)}"'
        )
        vocabulary = (
            f"The original DNABERT vocabulary: {', '.join(SPECIAL_TOKENS)}, then all {4**k} {k}-mers in "
            "`itertools.product('ATCG')` order. The tokenizer does not lower-case (the original's did, which "
            "turned every k-mer into [UNK])."
        )
    else:
        library, usage = "multimolecule", (
            "import multimolecule  # registers DnaBert with transformers\n"
            "from transformers import AutoTokenizer, pipeline\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "model = multimolecule.DnaBertForMaskedLM.from_pretrained(path)\n"
            'unmasker = pipeline("fill-mask", model=path)'
        )
        vocabulary = (
            f"MultiMolecule's {k}-mer vocabulary (`<pad> <cls> <eos> <unk> <mask> <null>`, then k-mers in ACGT "
            "order); the rows were permuted from the DNABERT order. `<null>` copies the weights of `<unk>`."
        )
    sections = [
        f"---\nlibrary_name: {library}\npipeline_tag: fill-mask\ntags:\n- dna\n- dnabert\n- k-mer\n---\n",
        f"# DNABERT, k={k}\n",
        "A BERT masked-language model over overlapping DNA k-mers, pretrained with the `dnabert` framework "
        "following the DNABERT recipe (Ji et al., Bioinformatics 2021).\n",
        f"## Usage\n\n```python\n{usage}\n```\n",
        f"## Vocabulary\n\n{vocabulary}\n",
        "## Model configuration (dnabert's, in the DNABERT vocabulary)\n\n"
        f"```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n",
    ]
    if card_config:
        sections.append(f"## Training\n\n```json\n{json.dumps(_plain(card_config), indent=2, default=str)}\n```\n")
    return "\n".join(sections)


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
