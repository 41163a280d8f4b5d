"""The DNABERT family's layouts (BERT over k-mers): export to them, import from them.

- ``original``: what the released DNABERT checkpoints look like: ``BertForMaskedLM`` weights (config.json,
  model.safetensors), the original vocab.txt (ATCG k-mer order) and a ``BertTokenizer`` configured with
  ``do_lower_case=False`` (the original's lower-casing turned every k-mer into [UNK]). Import (``init_from``,
  ``load_pretrained_into``: ``model.init_from`` of the family) reads this layout.
- ``multimolecule``: the same weights in the layout of the ``multimolecule`` package (``model_type: dnabert``):
  parameter names renamed and the vocabulary rows permuted into its order (``<pad> <cls> <eos> <unk> <mask>
  <null>`` then k-mers in ACGT order). ``<null>`` has no counterpart in DNABERT: it gets a copy of [UNK]'s
  embedding and output bias, so it behaves exactly like ``<unk>``. This layout is written with MultiMolecule's own
  classes, so the files follow the installed version of that package; it must be installed to use the layout.

Fine-tuned classifiers go to either layout (``classifier_writer``; ``dnabert.run.saved_models.export_classifier``
picks the family and writes the card) and read back from either (``import_classifier``: the multimolecule one
through its tokenizer files, without the package).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizer

from dnabert.data.tokenizers.kmer import SUPPORTED_K, check_k, kmer_text, vocab_size, vocab_tokens, write_vocab
from dnabert.data.tokenizers.special import SPECIAL_TOKENS
from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import DnaBertConfig, DnaBertForMaskedLM
from dnabert.models.interop import (
    LAYOUTS,
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
    config: DnaBertConfig = model.config
    if config.vocab_size != vocab_size(k):
        raise DnabertError(
            f"The model has {config.vocab_size} vocabulary rows but k={k} needs {vocab_size(k)} (4^k + 5); "
            "pass the k the model was trained with."
        )
    state_dict = plain_state_dict(model)
    writer = _write_original if layout == "original" else _write_multimolecule

    def write(staging: Path) -> None:
        writer(state_dict, config, k, staging)
        (staging / "README.md").write_text(_model_card(config, k, layout, card_config))

    return write_replacing(Path(out_dir), write)


def init_from(hf_dir: str | Path, k: int) -> DnaBertForMaskedLM:
    """A model initialised from a ``BertForMaskedLM`` directory in the original DNABERT layout (e.g. released
    DNABERT weights), to continue pretraining; its architecture comes from the directory's config.json."""
    reference = _load_original_layout(hf_dir, k)
    model = DnaBertForMaskedLM(DnaBertConfig.from_hf_config(reference.config))
    load_strict(model, reference.state_dict(), str(hf_dir))
    return model


def load_pretrained_into(model: DnaBertForMaskedLM, hf_dir: str | Path, k: int) -> None:
    """Copy the weights of a DNABERT-layout directory into an existing model of the same architecture."""
    load_strict(model, _load_original_layout(hf_dir, k).state_dict(), str(hf_dir))


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
            "(4^k + 5); set tokenizer.k to the model's k."
        )
    return reference


def _write_original(state_dict: dict, config: DnaBertConfig, k: int, out_dir: Path) -> None:
    model = BertForMaskedLM(config.to_hf_config())
    load_strict(model, state_dict, "the model")
    model.save_pretrained(out_dir)
    _write_bert_tokenizer(config, k, out_dir)


def _write_bert_tokenizer(config: DnaBertConfig, k: int, out_dir: Path) -> None:
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


def _write_multimolecule(state_dict: dict, config: DnaBertConfig, k: int, out_dir: Path) -> None:
    multimolecule, tokenizer = _multimolecule_tokenizer(config, k)
    rows = multimolecule_rows(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), k)
    model = multimolecule.DnaBertForMaskedLM(_multimolecule_config(multimolecule, config, len(rows)))
    load_strict(model, _multimolecule_state(state_dict, rows), "the model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _multimolecule_tokenizer(config: DnaBertConfig, k: int) -> tuple[Any, Any]:
    """The multimolecule module (imported only for this layout) and its k-mer tokenizer."""
    multimolecule = import_multimolecule()
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


def _multimolecule_config(multimolecule: Any, config: DnaBertConfig, vocab_rows: int, **extra: Any) -> Any:
    return multimolecule.DnaBertConfig(
        vocab_size=vocab_rows,
        **multimolecule_encoder_fields(config),
        max_position_embeddings=config.max_position_embeddings,
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
            "is not supported (0.2.2 is)."
        ) from err


def classifier_writer(state_dict: dict, backbone: dict, head: dict, dropout: float, layout: str
                      ) -> Callable[[Path], None]:
    """What writes a fine-tuned classifier (``state_dict`` under transformers' BERT names, ``head``: num_labels,
    id2label ...) into a folder: transformers' ``BertForSequenceClassification`` with the original vocabulary, or
    MultiMolecule's ``DnaBertForSequencePrediction``; ``dropout`` is the classifier's, for the original config."""
    k, config = int(backbone["k"]), DnaBertConfig.from_dict(backbone["config"])

    def write(staging: Path) -> None:
        if layout == "original":
            hf_config = config.to_hf_config()
            for key, value in {**head, "classifier_dropout": dropout}.items():
                setattr(hf_config, key, value)
            model = BertForSequenceClassification(hf_config)
            load_strict(model, state_dict, "the fine-tuned model")
            model.save_pretrained(staging)
            _write_bert_tokenizer(config, k, staging)
        else:
            multimolecule, tokenizer = _multimolecule_tokenizer(config, k)
            rows = multimolecule_rows(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), k)
            renamed = {prefix_renamed(key, MULTIMOLECULE_HEAD_RENAMES): value
                       for key, value in _multimolecule_state(state_dict, rows).items()}
            model = multimolecule.DnaBertForSequencePrediction(
                _multimolecule_config(multimolecule, config, len(rows), **head))
            load_strict(model, renamed, "the fine-tuned model")
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)

    return write


def import_classifier(directory: Path) -> tuple[dict, dict, dict]:
    """A fine-tuned classifier written by ``classifier_writer`` read back, from either layout: transformers'
    ``BertForSequenceClassification`` (the default) or MultiMolecule's ``DnaBertForSequencePrediction``:
    (backbone, state dict under transformers' BERT names, head); see ``ModelFamily.import_classifier``."""
    config_json = json.loads((directory / "config.json").read_text())
    architectures = config_json.get("architectures") or []
    if "DnaBertForSequencePrediction" in architectures:
        return _import_multimolecule_classifier(directory, config_json)
    if "BertForSequenceClassification" not in architectures:
        raise DnabertError(f"{directory} is not a BertForSequenceClassification or DnaBertForSequencePrediction "
                           f"export (architectures {architectures}); pass the seed folder or its checkpoint instead.")
    config = DnaBertConfig.from_hf_config(BertConfig.from_pretrained(directory))
    k = next((candidate for candidate in SUPPORTED_K if vocab_size(candidate) == config.vocab_size), None)
    if k is None:
        raise DnabertError(f"{directory}: vocabulary of {config.vocab_size} rows is not a DNABERT k-mer vocabulary.")
    backbone = {"family": "dnabert", "k": k, "config": config.to_dict(), "tokenizer": None}
    return backbone, read_weights(directory), classifier_head(config_json)


def _import_multimolecule_classifier(directory: Path, config_json: dict) -> tuple[dict, dict, dict]:
    """The multimolecule layout read back without the multimolecule package: its k and k-mer order from the
    tokenizer files, every vocabulary row moved back to DNABERT's order (its `<null>` row, a copy of `<unk>`,
    dropped), the names back to BERT's."""
    tokenizer_config = directory / "tokenizer_config.json"
    k = json.loads(tokenizer_config.read_text()).get("nmers") if tokenizer_config.is_file() else None
    if k not in SUPPORTED_K or not (directory / "vocab.txt").is_file():
        raise DnabertError(f"{directory}: a DnaBertForSequencePrediction export needs its tokenizer_config.json "
                           "(nmers) and vocab.txt; pass the seed folder or its checkpoint instead.")
    rows = multimolecule_rows((directory / "vocab.txt").read_text().split(), k).tolist()  # theirs -> DNABERT id
    dnabert_order = torch.tensor([rows.index(token) for token in range(vocab_size(k))])
    config = DnaBertConfig(
        vocab_size=vocab_size(k), hidden_size=config_json["hidden_size"],
        num_hidden_layers=config_json["num_hidden_layers"], num_attention_heads=config_json["num_attention_heads"],
        intermediate_size=config_json["intermediate_size"],
        max_position_embeddings=config_json["max_position_embeddings"],
        type_vocab_size=config_json.get("type_vocab_size", 2), hidden_dropout_prob=config_json["hidden_dropout"],
        attention_probs_dropout_prob=config_json["attention_dropout"], layer_norm_eps=config_json["layer_norm_eps"],
        initializer_range=config_json["initializer_range"], hidden_act=config_json["hidden_act"])
    back = tuple((new, old) for old, new in (*MULTIMOLECULE_RENAMES, *MULTIMOLECULE_HEAD_RENAMES))
    state_dict = {}
    for key, value in read_weights(directory).items():
        name = prefix_renamed(key, back).replace("layer_norm", "LayerNorm")
        state_dict[name] = value[dnabert_order] if name in VOCAB_ROW_KEYS else value
    backbone = {"family": "dnabert", "k": k, "config": config.to_dict(), "tokenizer": None}
    return backbone, state_dict, classifier_head(config_json)


def _model_card(config: DnaBertConfig, k: int, layout: str, card_config: dict | None) -> str:
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
        sections.append(card_json_section("Training", card_config))
    return "\n".join(sections)
