"""DNABERT: BERT over overlapping k-mers (model.py: the network; interop.py: transformers'/MultiMolecule's
layouts). `FAMILY` is what the rest of the code knows of it (dnabert.models.family)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dnabert.data.tokenizers.kmer import kmer_text
from dnabert.models.family import ClassifierCard, FamilyCost, ModelFamily


def _model() -> ModuleType:
    """The family's network module (model.py)."""
    # Imported on first use: a run of another family never loads it (it imports transformers' BertConfig).
    from dnabert.models.dnabert import model

    return model


def _interop() -> ModuleType:
    """The family's export and import module (interop.py)."""
    # Imported on first use: transformers' BERT models load only when a run imports or exports weights.
    from dnabert.models.dnabert import interop

    return interop


class DnaBertFamily(ModelFamily):
    """BERT (transformers' BertForMaskedLM names and shapes) over the k-mers of `k`; exports to transformers'
    original DNABERT layout (the default) or MultiMolecule's; imports the original layout."""

    name = "dnabert"
    label = "BERT"
    tokenizer = "kmer"
    directory_fallback = True  # any transformers BERT directory with a k-mer vocabulary (released DNABERT weights)
    layouts = ("original", "multimolecule")
    paper_run = dict(preset="bert_base", max_tokens=512, global_batch=2000, micro_batch=10, max_steps=120_000)
    # Every linear layer: attention q/k/v, its output and the feed-forward's two (attention.output.dense,
    # intermediate.dense, output.dense) -- closer to full fine-tuning than q/v alone (QLoRA, Dettmers et al. 2023).
    lora_targets = ("query", "key", "value", "dense")

    def config_class(self) -> type:
        return _model().DnaBertConfig

    def model_class(self) -> type[torch.nn.Module]:
        return _model().DnaBertForMaskedLM

    def owns_config(self, config: Any) -> bool:
        """Any config with BERT's attribute names (DnaBertConfig, transformers.BertConfig): the fallback family."""
        return hasattr(config, "max_position_embeddings")

    def cost(self, config: Any) -> FamilyCost:
        """Embeddings with positions; per layer q/k/v/out and a two-matrix feed-forward; tied decoder."""
        hidden, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
        embeddings = (vocab + config.max_position_embeddings + config.type_vocab_size) * hidden + 2 * hidden
        layer_matrices = 4 * hidden * hidden + 2 * hidden * ffn
        layer = layer_matrices + 9 * hidden + ffn  # biases (q, k, v, out, ffn-in, ffn-out) and two LayerNorms
        head = hidden * hidden + 3 * hidden + vocab  # transform dense + LayerNorm + decoder bias (weight is tied)
        layers = config.num_hidden_layers
        # Korthikanti et al. 2022: 11 h attention, 19 h MLP, 4 h LayerNorms
        return FamilyCost(embeddings + layers * layer + head, layers * layer_matrices, 34 * hidden)

    def preset(self, name: str, k: int | None, vocab_size: int | None) -> Any:
        return _model().preset(name, k)

    def export(self, model: torch.nn.Module, out_dir: Path, layout: str | None, k: int | None,
               tokenizer_file: Path | None, card_config: dict | None) -> Path:
        return _interop().export_model(model, k, out_dir, layout or self.layouts[0], card_config)

    def classifier_writer(self, state_dict: dict[str, torch.Tensor], backbone: dict[str, Any],
                          head: dict[str, Any], dropout: float, layout: str | None) -> Callable[[Path], None]:
        return _interop().classifier_writer(state_dict, backbone, head, dropout, layout or self.layouts[0])

    def classifier_card(self, k: int | None, layout: str | None) -> ClassifierCard:
        model_class = ("BertForSequenceClassification" if (layout or self.layouts[0]) == "original"
                       else "multimolecule.DnaBertForSequencePrediction")
        tokens = (f"upper-case, space-separated overlapping {k}-mers "
                  f'(e.g. "{kmer_text("GATTACAGATTACA", k)}") with the bundled tokenizer')
        return ClassifierCard(f"DNABERT k={k}", "k-mer", tokens, model_class)

    def import_classifier(self, directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        """Either layout: the original (the default export) and MultiMolecule's."""
        return _interop().import_classifier(Path(directory))

    def import_directory(self, directory: Path, k: int | None) -> torch.nn.Module:
        return _interop().init_from(directory, k)

    def load_into(self, model: torch.nn.Module, directory: Path, k: int | None) -> None:
        _interop().load_pretrained_into(model, directory, k)


FAMILY = DnaBertFamily()
