"""Tiny stand-ins for the released DNABERT-2 (zhihan1996/DNABERT-2-117M): its tokenizer's special ids and its files'
layout, built from scratch (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

PUBLISHED_SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4 in the release: [PAD]=3, [CLS]=1
PUBLISHED_ORDER = (3, 0, 1, 2, 4)  # the project's special id i is the published id PUBLISHED_ORDER[i]
VOCABULARY_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight",
                   "cls.predictions.decoder.bias")


def train_published_tokenizer(texts: list[str], vocab_size: int, path: Path) -> Path:
    """A small BPE tokenizer trained like DNABERT-2's (Whitespace pre-tokenizer, its special tokens and ids)."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=PUBLISHED_SPECIALS,
                                                             show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tokenizer.save(str(path))
    return path


def write_original_release(model: torch.nn.Module, directory: Path, tokenizer_file: str | Path,
                           with_pooler: bool = False) -> Path:
    """What zhihan1996/DNABERT-2-117M holds: BERT field names (pad_token_id BertConfig's 0, unlike the tokenizer's
    3), remote-code auto_map, a pytorch_model.bin under the original key names (those MultiMolecule converts)."""
    directory.mkdir()
    config = {**model.config.to_dict(), "architectures": ["BertForMaskedLM"], "model_type": "bert",
              "auto_map": {"AutoModel": "bert_layers.BertModel"}, "max_position_embeddings": 512,
              "position_embedding_type": "absolute", "pad_token_id": 0, "torch_dtype": "float32"}
    del config["cls_token_id"]
    (directory / "config.json").write_text(json.dumps(config))
    weights = dict(model.state_dict())
    if with_pooler:
        hidden = model.config.hidden_size
        weights["bert.pooler.dense.weight"] = torch.zeros(hidden, hidden)
        weights["bert.pooler.dense.bias"] = torch.zeros(hidden)
    torch.save(weights, directory / "pytorch_model.bin")
    (directory / "tokenizer.json").write_text(Path(tokenizer_file).read_text())
    return directory


def in_project_order(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What importing a model saved with the published tokenizer gives: its vocabulary rows in the project's order."""
    def permuted(rows: torch.Tensor) -> torch.Tensor:
        return rows[project_rows(rows.shape[0])]

    return {key: permuted(value) if key in VOCABULARY_ROWS else value for key, value in state_dict.items()}


def project_rows(vocab_size: int) -> torch.Tensor:
    """The published vocabulary's rows in the project's order (index a published-order tensor with it)."""
    return torch.tensor([*PUBLISHED_ORDER, *range(len(PUBLISHED_ORDER), vocab_size)])
