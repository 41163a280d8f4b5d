"""A model family that lives outside the package: `model.family=tests.third_family:FAMILY`.

A convolutional masked LM over k-mers (embeddings + one gated 1-D convolution + LayerNorm, a linear MLM head),
with its own config, export (config.json + model.safetensors), import and FLOPs. tests/test_third_family.py runs
pretraining, resume, the probe, fine-tuning, export and the estimate with it through the command lines;
tests/test_embed.py its embeddings. It keeps ModelFamily's defaults for `attention_probabilities` (it has no
attention: the attention command refuses it with a DnabertError) and `import_classifier` (its fine-tuned exports
are not read back; predictions come from the seed folder's checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dnabert.data.tokenizers.special import PAD_ID
from dnabert.models.components import ConfigFromDict, mlm_logits
from dnabert.models.family import ClassifierCard, FamilyCost, ModelFamily
from dnabert.models.interop import load_strict, plain_state_dict, read_weights, write_replacing

WEIGHTS = "model.safetensors"
KERNEL = 5


@dataclass
class ConvConfig(ConfigFromDict):
    """The model group's fields (BERT's names, so configs/model/tiny.yaml composes); the convolution uses the
    vocabulary, hidden size, positions and dropout, and keeps the others for describe_model and the checks."""

    vocab_size: int
    hidden_size: int = 32
    num_hidden_layers: int = 1
    num_attention_heads: int = 1
    intermediate_size: int = 64
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    hidden_act: str = "gelu"


class ConvEncoder(nn.Module):
    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.conv = nn.Conv1d(config.hidden_size, 2 * config.hidden_size, KERNEL, padding=KERNEL // 2)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class ConvForMaskedLM(nn.Module):
    """`encode`/`forward` with the BERT signature every family keeps (packed rows are not supported)."""

    def __init__(self, config: ConvConfig, attention: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        self.encoder = ConvEncoder(config)
        self.cls = nn.Linear(config.hidden_size, config.vocab_size)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, packed: bool = False) -> torch.Tensor:
        keep = ((input_ids != PAD_ID) if attention_mask is None else attention_mask.bool()).unsqueeze(-1)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden = self.encoder.word_embeddings(input_ids) + self.encoder.position_embeddings(position_ids)
        value, gate = self.encoder.conv((hidden * keep).transpose(1, 2)).transpose(1, 2).chunk(2, dim=-1)
        hidden = self.encoder.LayerNorm(hidden + self.encoder.dropout(value * torch.sigmoid(gate)))
        return hidden * keep

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                packed: bool = False, head_on_masked_only: bool = True) -> torch.Tensor:
        hidden = self.encode(input_ids, attention_mask, position_ids, packed)
        return mlm_logits(self.cls, hidden, masked_positions, head_on_masked_only)


def _write(state_dict: dict[str, torch.Tensor], config: dict[str, Any], extra: dict[str, Any]
           ) -> Callable[[Path], None]:
    def write(staging: Path) -> None:
        save_file({key: value.contiguous() for key, value in state_dict.items()}, staging / WEIGHTS)
        (staging / "config.json").write_text(json.dumps({"model_type": "conv_dna", **config, **extra}, indent=2))

    return write


class ConvFamily(ModelFamily):
    name = "tests.third_family:FAMILY"  # the import path: what model.family says and checkpoints store
    label = "gated convolution"
    tokenizer = "kmer"
    lora_targets = ("conv",)  # no linear layer in the encoder: LoRA adapts the gated convolution

    def config_class(self) -> type:
        return ConvConfig

    def model_class(self) -> type[nn.Module]:
        return ConvForMaskedLM

    def cost(self, config: Any) -> FamilyCost:
        hidden, vocab = config.hidden_size, config.vocab_size
        embeddings = (vocab + config.max_position_embeddings) * hidden
        conv = KERNEL * hidden * 2 * hidden
        parameters = embeddings + conv + 2 * hidden + 2 * hidden + hidden * vocab + vocab
        return FamilyCost(parameters, conv, 8 * hidden)

    def export(self, model: nn.Module, out_dir: Path, layout: str | None, k: int | None,
               tokenizer_file: Path | None, card_config: dict | None) -> Path:
        return write_replacing(Path(out_dir), _write(plain_state_dict(model), model.config.to_dict(), {"k": k}))

    def classifier_writer(self, state_dict: dict[str, torch.Tensor], backbone: dict[str, Any],
                          head: dict[str, Any], dropout: float, layout: str | None) -> Callable[[Path], None]:
        return _write(state_dict, backbone["config"], {"k": backbone["k"], "num_labels": head["num_labels"]})

    def classifier_card(self, k: int | None, layout: str | None) -> ClassifierCard:
        return ClassifierCard(f"ConvDNA k={k}", "k-mer", f"overlapping {k}-mers", "ConvForMaskedLM")

    def recognises_directory(self, config_json: dict[str, Any]) -> bool:
        return config_json.get("model_type") == "conv_dna"

    def import_directory(self, directory: Path, k: int | None) -> nn.Module:
        fields = json.loads((Path(directory) / "config.json").read_text())
        model = ConvForMaskedLM(ConvConfig.from_dict({key: value for key, value in fields.items()
                                                       if key in ConvConfig.__dataclass_fields__}))
        self.load_into(model, directory, k)
        return model

    def load_into(self, model: nn.Module, directory: Path, k: int | None) -> None:
        load_strict(model, read_weights(Path(directory)), str(directory))


FAMILY = ConvFamily()
