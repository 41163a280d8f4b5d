"""The DNABERT-2 family's layouts (MosaicBERT over BPE): export to MultiMolecule's, import from it and the release's.

DNABERT-2 has one export layout, ``multimolecule`` (its ``DnaBert2ForMaskedLM``, ``model_type: dnabert2``): the
original checkpoint's names renamed (``Wqkv`` split into query/key/value), the BPE ``tokenizer.json`` of the run as
a ``PreTrainedTokenizerFast`` with its own special tokens and ids. Import (``init_from_dnabert2``,
``load_dnabert2_into``: ``model.init_from`` of the family) reads that layout and the original release's
(``bert.*``/``cls.predictions.*`` keys, ``config.json`` with BERT's field names, as zhihan1996/DNABERT-2-117M).
A directory whose tokenizer.json has the published special ids ([UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4) imports
with rows 0..4 of the embeddings and MLM decoder in the project's order, to fit that tokenizer converted by
``dnabert.data.tokenizers.bpe.convert_bpe``: every other token keeps its id and row.
Fine-tuned classifiers: ``dnabert2_classifier_writer`` (``dnabert.run.saved_models.export_classifier`` dispatches).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from dnabert.data.tokenizers.bpe import TOKENIZER_FILE, bpe_file, convertible, read_bpe, special_id_order
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert2.model import DnaBert2Config, DnaBert2ForMaskedLM
from dnabert.models.interop import (
    MULTIMOLECULE_HEAD_RENAMES,
    card_json_section,
    classifier_head,
    import_multimolecule,
    load_strict,
    multimolecule_encoder_fields,
    plain_state_dict,
    prefix_renamed,
    read_weights,
    write_replacing,
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
# The tensors with one row per token, whose rows 0..4 move when the special ids are renumbered.
DNABERT2_VOCABULARY_ROWS = (
    "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
)


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
    state_dict = dnabert2_to_multimolecule(plain_state_dict(model), config.hidden_size)

    def write(staging: Path) -> None:
        _write_multimolecule_dnabert2(state_dict, config, tokenizer, staging)
        (staging / "README.md").write_text(_dnabert2_model_card(config, card_config))

    return write_replacing(Path(out_dir), write)


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
    multimolecule = import_multimolecule()
    mm_config = multimolecule.DnaBert2Config(
        vocab_size=config.vocab_size,
        **multimolecule_encoder_fields(config),
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
    load_strict(model, state_dict, "the model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def is_dnabert2_directory(config: dict) -> bool:
    """Whether a model directory's config.json is DNABERT-2's: MultiMolecule's (``model_type: dnabert2``) or the
    original release's, which says ``model_type: bert`` but has ALiBi (``alibi_starting_size``) or the remote code
    (``auto_map`` to ``bert_layers``); transformers' BERT has neither."""
    remote_code = any(str(target).startswith("bert_layers.") for target in (config.get("auto_map") or {}).values())
    return config.get("model_type") == "dnabert2" or "alibi_starting_size" in config or remote_code


def init_from_dnabert2(directory: str | Path) -> DnaBert2ForMaskedLM:
    """A DNABERT-2 model initialised from a MultiMolecule export or an original-layout directory (released
    weights), to continue pretraining; its architecture comes from the directory's config.json. A tokenizer.json
    with the published special ids has the embedding and decoder rows of those ids moved to the project's
    ([PAD]=0 [CLS]=2), so the model fits the converted tokenizer; otherwise the [PAD]/[CLS] ids come from the
    directory's tokenizer.json (else the config, else the published ids)."""
    config, state_dict = _read_dnabert2_directory(directory)
    model = DnaBert2ForMaskedLM(config)
    load_strict(model, state_dict, str(directory))
    return model


def load_dnabert2_into(model: DnaBert2ForMaskedLM, directory: str | Path) -> None:
    """Copy the weights of a DNABERT-2 directory (either layout) into an existing model of the same shape
    (``model.init_from`` for the dnabert2 family). Its [PAD]/[CLS] ids must be those the directory imports with
    (the project's, for a release whose tokenizer is converted): other ids would train on the wrong rows silently."""
    config, state_dict = _read_dnabert2_directory(directory)
    ids = {name: getattr(config, name) for name in ("pad_token_id", "cls_token_id")}
    if any(getattr(model.config, name) != value for name, value in ids.items()):
        raise DnabertError(
            f"model.init_from={directory} imports with {ids}, but the model has pad_token_id="
            f"{model.config.pad_token_id}, cls_token_id={model.config.cls_token_id}; remove those model.* overrides."
        )
    load_strict(model, state_dict, str(directory))


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
    weights = read_weights(directory)
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
    tokenizer_file = directory / TOKENIZER_FILE
    tokenizer = read_bpe(tokenizer_file)[1] if tokenizer_file.is_file() else None
    if tokenizer is None or not convertible(tokenizer):
        config_values.update(_dnabert2_special_ids(tokenizer))
    else:  # the data path's ids: the tokenizer is converted the same way (dnabert.data.tokenizers.bpe.convert_bpe)
        state_dict = _permute_special_rows(state_dict, special_id_order(tokenizer))
        config_values.update(pad_token_id=PAD_ID, cls_token_id=CLS_ID)
    return DnaBert2Config.from_dict(config_values), state_dict


def _permute_special_rows(state_dict: dict[str, torch.Tensor], order: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Rows 0..4 of the vocabulary-sized tensors (word embeddings, the tied MLM decoder and its bias) put in the
    project's order: new row i = old row order[i], as the converted tokenizer's ids."""
    def permuted(rows: torch.Tensor) -> torch.Tensor:
        index = torch.arange(rows.shape[0])
        index[: len(order)] = torch.tensor(order)
        return rows[index]

    return {key: permuted(value) if key in DNABERT2_VOCABULARY_ROWS else value for key, value in state_dict.items()}


def _dnabert2_special_ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    """[PAD]/[CLS] ids from the directory's tokenizer, under either naming; none without one."""
    if tokenizer is None:
        return {}
    ids = {}
    for field, names in (("pad_token_id", DNABERT2_PAD_NAMES), ("cls_token_id", DNABERT2_CLS_NAMES)):
        found = [tokenizer.token_to_id(name) for name in names if tokenizer.token_to_id(name) is not None]
        if found:
            ids[field] = found[0]
    return ids


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
        sections.append(card_json_section("Training", card_config))
    return "\n".join(sections)


def import_dnabert2_classifier(directory: Path) -> tuple[dict, dict, dict]:
    """A fine-tuned ``DnaBert2ForSequencePrediction`` directory (``dnabert2_classifier_writer``'s) read back:
    (backbone with the directory's tokenizer.json, state dict under transformers' BERT names, head)."""
    config_json = json.loads((directory / "config.json").read_text())
    if "DnaBert2ForSequencePrediction" not in (config_json.get("architectures") or []):
        raise DnabertError(f"{directory} is not a DnaBert2ForSequencePrediction export; pass the seed folder or its "
                           "checkpoint instead.")
    config, state_dict = _read_dnabert2_directory(directory)
    head_names = tuple((new, old) for old, new in MULTIMOLECULE_HEAD_RENAMES)
    state_dict = {prefix_renamed(key, head_names): value for key, value in state_dict.items()
                  if not key.startswith("cls.")}  # the MLM decoder _read_dnabert2_directory ties in
    backbone = {"family": "dnabert2", "k": None, "config": config.to_dict(),
                "tokenizer": str(directory / TOKENIZER_FILE)}
    return backbone, state_dict, classifier_head(config_json)


def dnabert2_classifier_writer(state_dict: dict, backbone: dict, head: dict, layout: str) -> Callable[[Path], None]:
    """What writes a fine-tuned DNABERT-2 classifier (state under transformers' BERT names) into a folder as
    MultiMolecule's ``DnaBert2ForSequencePrediction`` with the backbone's BPE tokenizer: the pooler and head are
    BERT's, as in MultiMolecule, so the logits are equal. The layout and tokenizer are checked now, before a folder
    is touched."""
    if layout != "multimolecule":
        raise DnabertError(
            f"Fine-tuned DNABERT-2 models export in the multimolecule layout only (--layout multimolecule), not "
            f"{layout!r}: transformers has no DNABERT-2 class, and the original release needs its own remote code."
        )
    config = DnaBert2Config.from_dict(backbone["config"])
    tokenizer = dnabert2_tokenizer(bpe_file(backbone["tokenizer"]), config)
    renamed = {prefix_renamed(key, MULTIMOLECULE_HEAD_RENAMES): value
               for key, value in dnabert2_to_multimolecule(state_dict, config.hidden_size).items()}
    return partial(_write_multimolecule_dnabert2, renamed, config, tokenizer, head=head)
