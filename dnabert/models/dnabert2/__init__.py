"""DNABERT-2: MosaicBERT (ALiBi, gated linear units) over BPE tokens (model.py: the network; interop.py:
MultiMolecule's layout and the original release's). `FAMILY` is what the rest of the code knows of it
(dnabert.models.family)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dnabert.models.family import ClassifierCard, FamilyCost, ModelFamily


def _model() -> ModuleType:
    """The family's network module (model.py)."""
    # Imported on first use: a k-mer run never loads this family's network.
    from dnabert.models.dnabert2 import model

    return model


def _interop() -> ModuleType:
    """The family's export and import module (interop.py)."""
    # Imported on first use: transformers' tokenizer I/O loads only when a run imports or exports weights.
    from dnabert.models.dnabert2 import interop

    return interop


class DnaBert2Family(ModelFamily):
    """MosaicBERT over the run's BPE tokenizer; exports to MultiMolecule's DnaBert2 only; imports that layout
    and the original release's."""

    name = "dnabert2"
    label = "DNABERT-2 (MosaicBERT)"
    tokenizer = "bpe"
    layouts = ("multimolecule",)
    # DNABERT-2's micro-batch is not published (4096 sequences per step on 8 GPUs); 64 x 8 accumulation is an
    # assumption that only affects the memory line.
    paper_run = dict(preset="base", max_tokens=128, global_batch=4096, micro_batch=64, max_steps=500_000)
    # Every linear layer: the fused q/k/v projection (there is no query/value module), the attention output and
    # the gated feed-forward's two.
    lora_targets = ("Wqkv", "dense", "gated_layers", "wo")

    def config_class(self) -> type:
        return _model().DnaBert2Config

    def model_class(self) -> type[torch.nn.Module]:
        return _model().DnaBert2ForMaskedLM

    def positions(self, config: dict[str, Any]) -> tuple[int, int | None]:
        """ALiBi has no position table: the default is the length its biases were laid out for
        (`alibi_starting_size`), and longer windows are allowed."""
        return int(config["alibi_starting_size"]), None

    def owns_config(self, config: Any) -> bool:
        """dnabert's DnaBert2Config and MultiMolecule's carry `alibi_starting_size`; BERT's do not."""
        return getattr(config, "alibi_starting_size", None) is not None

    def cost(self, config: Any) -> FamilyCost:
        """No position embeddings (ALiBi's bias is element-wise, no matmul FLOPs), fused q/k/v, a bias-free
        gate/value matrix: three hidden x intermediate matrices per layer. The gated feed-forward saves 3 h + 8 ffn
        activation bytes per token instead of the MLP's 19 h; the ALiBi bias is counted as one bf16 (b, heads, s, s)
        tensor shared by all layers, what packed rows on SDPA build (the upper bound: one-window rows share one
        (1, heads, s, s) bias, and FlexAttention builds none)."""
        hidden, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
        embeddings = (vocab + config.type_vocab_size) * hidden + 2 * hidden
        layer_matrices = 4 * hidden * hidden + 3 * hidden * ffn
        layer = layer_matrices + 9 * hidden  # biases (q, k, v, out, ffn-out) and two LayerNorms
        head = hidden * hidden + 3 * hidden + vocab  # transform dense + LayerNorm + decoder bias (weight is tied)
        layers, heads = config.num_hidden_layers, config.num_attention_heads
        return FamilyCost(embeddings + layers * layer + head, layers * layer_matrices,
                          15 * hidden + 3 * hidden + 8 * ffn,
                          lambda max_tokens, micro_batch: 2 * heads * max_tokens**2 * micro_batch)

    def preset(self, name: str, k: int | None, vocab_size: int | None) -> Any:
        return _model().preset(name, vocab_size)

    def export(self, model: torch.nn.Module, out_dir: Path, layout: str | None, k: int | None,
               tokenizer_file: Path | None, card_config: dict | None) -> Path:
        return _interop().export_dnabert2_model(model, tokenizer_file, out_dir, layout or self.layouts[0], card_config)

    def export_description(self, layout: str | None) -> str:
        return "Hugging Face model (MultiMolecule layout)"

    def classifier_writer(self, state_dict: dict[str, torch.Tensor], backbone: dict[str, Any],
                          head: dict[str, Any], dropout: float, layout: str | None) -> Callable[[Path], None]:
        return _interop().dnabert2_classifier_writer(state_dict, backbone, head, layout or self.layouts[0])

    def classifier_card(self, k: int | None, layout: str | None) -> ClassifierCard:
        return ClassifierCard("DNABERT-2", "bpe",
                              'the upper-case sequence (e.g. "GATTACAGATTACA") with the bundled BPE tokenizer',
                              "multimolecule.DnaBert2ForSequencePrediction")

    def recognises_directory(self, config_json: dict[str, Any]) -> bool:
        return _interop().is_dnabert2_directory(config_json)

    def import_classifier(self, directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        return _interop().import_dnabert2_classifier(Path(directory))

    def import_directory(self, directory: Path, k: int | None) -> torch.nn.Module:
        return _interop().init_from_dnabert2(directory)

    def load_into(self, model: torch.nn.Module, directory: Path, k: int | None) -> None:
        _interop().load_dnabert2_into(model, directory)


FAMILY = DnaBert2Family()
