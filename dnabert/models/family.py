"""The model-family interface: everything the rest of the code asks of a family, in one object.

Each folder `dnabert/models/<family>/` exposes `FAMILY`, an instance of a `ModelFamily` subclass, in its
`__init__.py`; `dnabert.models` maps `model.family` names to them (`get_family`). Code outside `dnabert/models/`
asks the family object and never names a family. A family's network, config and interop modules are imported
by its methods when first used, so that a run imports only the family it trains (and a k-mer run never pulls in
transformers' BERT classes or MultiMolecule before it exports).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dnabert.errors import DnabertError


@dataclass(frozen=True)
class ClassifierCard:
    """What a fine-tuned classifier's model card says about the family: its name, a hub tag, how to feed it, and
    the class the export loads as."""

    name: str
    tag: str
    tokens: str
    model_class: str


@dataclass(frozen=True)
class FamilyCost:
    """What the compute estimate needs of a model config (dnabert.run.estimate): all parameters, those in the
    encoder's weight matrices (2 FLOPs per multiply-add and token), and the bytes one micro-batch's activations
    take beyond the shared terms (attention scores when materialised, the MLM head's logits)."""

    parameters: int
    matmul_parameters: int
    activation_bytes_per_token_and_layer: float
    extra_activation_bytes: Callable[[int, int], float] = lambda max_tokens, micro_batch: 0.0


class ModelFamily(ABC):
    """One model family. `name` is what `model.family` says for a built-in family (a third-party family is
    named by the import path of its object, `package.module:FAMILY`).

    Contracts every family keeps (tasks, the probe and fine-tuning rely on them): the masked-LM model takes
    `(config, attention=...)`, has `.config` (with `vocab_size`, `hidden_size`, `num_hidden_layers`,
    `num_attention_heads`, `intermediate_size`, `attention_probs_dropout_prob`), `.attention`, the MLM head as
    attribute `cls` (state-dict keys `cls.*`), `encode(input_ids, attention_mask=None, position_ids=None,
    packed=False) -> (B, T, H)` and `forward(input_ids, attention_mask=None, position_ids=None,
    masked_positions=None, packed=False, head_on_masked_only=True)`; the special ids are the k-mer vocabulary's
    (dnabert.data.tokenizers.kmer)."""

    name: str
    label: str  # how the run's log names the architecture ("BERT")
    tokenizer: str  # the tokenizer kind its exports, imports and fine-tuning need: "kmer" or "bpe"
    directory_fallback: bool = False  # claims any model directory no other family recognises
    layouts: tuple[str, ...] = ("original",)  # export layouts, the default first
    paper_run: dict[str, Any] | None = None  # the published run: the estimate CLI's defaults (None: not offered)
    # The encoder layers `adapter=lora` adapts when lora.target_modules is null: module names or dotted suffixes
    # of them, as peft matches them. None: every nn.Linear of the encoder, by its last name.
    lora_targets: tuple[str, ...] | None = None

    # ------------------------------------------------------------------------------------------- building
    @abstractmethod
    def config_class(self) -> type:
        """The config dataclass (`from_dict`/`to_dict`, misspelt fields refused by name)."""

    @abstractmethod
    def model_class(self) -> type[torch.nn.Module]:
        """The masked-LM model class."""

    def build(self, config: dict[str, Any], attention: str = "sdpa") -> torch.nn.Module:
        """The masked-LM model from a plain config dict, randomly initialised (global RNG)."""
        return self.model_class()(self.config_class().from_dict(dict(config)), attention=attention)

    def build_encoder(self, config: dict[str, Any]) -> torch.nn.Module:
        """The model without its MLM head, for fine-tuning (its decoder is tied to the word embeddings, which
        stay)."""
        encoder = self.build(config)
        del encoder.cls
        return encoder

    def positions(self, config: dict[str, Any]) -> tuple[int, int | None]:
        """(default tokens per window, [CLS]/[SEP] included; hard limit or None): a position table's size twice."""
        return int(config["max_position_embeddings"]), int(config["max_position_embeddings"])

    def owns_config(self, config: Any) -> bool:
        """Whether a config object (ours, or transformers'/MultiMolecule's) is this family's."""
        return isinstance(config, self.config_class())

    @abstractmethod
    def cost(self, config: Any) -> FamilyCost:
        """Parameter counts and activation bytes of a config, for the compute estimate."""

    def attention_probabilities(self, model: torch.nn.Module, input_ids: torch.Tensor,
                                attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per layer, the (B, heads, T, T) float32 attention probabilities of one forward (rows: queries), for
        reading a model. The default serves a model whose attention modules follow
        `components.recording_attention`'s contract (an attribute `recorded`: DNABERT, DNABERT-2 with its ALiBi
        bias); a model without attention is refused with a DnabertError."""
        # Imported here: components loads transformers' activations, which most commands never need.
        from dnabert.models.components import recording_attention

        with torch.no_grad(), recording_attention(model) as recorded:
            model.encode(input_ids, attention_mask=attention_mask)
        if not recorded:
            raise DnabertError(f"model family {self.name} ({self.label}) has no attention probabilities to show; "
                               "use an attention model (DNABERT, DNABERT-2).")
        return recorded

    def preset(self, name: str, k: int | None, vocab_size: int | None) -> Any:
        """A named model size (the estimate CLI's `--preset`)."""
        raise NotImplementedError(f"model family {self.name} has no presets")

    # ------------------------------------------------------------------------------------- import / export
    @abstractmethod
    def export(self, model: torch.nn.Module, out_dir: Path, layout: str | None, k: int | None,
               tokenizer_file: Path | None, card_config: dict | None) -> Path:
        """Write a masked-LM model as a loadable directory (k: a k-mer model's; tokenizer_file: a BPE model's)."""

    def export_description(self, layout: str | None) -> str:
        """How the end-of-run summary names the export."""
        return "Hugging Face model"

    @abstractmethod
    def classifier_writer(self, state_dict: dict[str, torch.Tensor], backbone: dict[str, Any],
                          head: dict[str, Any], dropout: float, layout: str | None) -> Callable[[Path], None]:
        """What writes a fine-tuned classifier (state under transformers' BERT names: `bert.*`,
        `bert.pooler.dense.*`, `classifier.*`; `head`: num_labels, id2label ...) into a staging folder. Checks the
        layout before any folder is touched."""

    @abstractmethod
    def classifier_card(self, k: int | None, layout: str | None) -> ClassifierCard:
        """The family's part of a fine-tuned classifier's model card."""

    def recognises_directory(self, config_json: dict[str, Any]) -> bool:
        """Whether a model directory's config.json is this family's (`pretrained=` of fine-tuning)."""
        return False

    def import_classifier(self, directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        """A fine-tuned classifier written by `classifier_writer` (its default layout), read back: (backbone
        `{"family", "k", "config", "tokenizer"}`, state dict under transformers' BERT names, head `{"num_labels",
        "id2label", "problem_type"}`). Default: not offered (the seed folder's checkpoint always reads back)."""
        raise DnabertError(f"{directory}: fine-tuned {self.label} exports cannot be read back; pass the seed folder "
                           "or its checkpoints/best-*.ckpt instead.")

    @abstractmethod
    def import_directory(self, directory: Path, k: int | None) -> torch.nn.Module:
        """A masked-LM model with the weights of a saved model directory (fine-tuning's `pretrained=`)."""

    @abstractmethod
    def load_into(self, model: torch.nn.Module, directory: Path, k: int | None) -> None:
        """Copy a saved model directory's weights into a model of the same shape (`model.init_from`)."""

