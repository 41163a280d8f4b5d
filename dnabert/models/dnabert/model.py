"""A compact BERT encoder with a masked-language-model head, written for DNABERT pretraining.

Why our own module instead of wrapping transformers' ``BertForMaskedLM``: training needs two things that model
does not offer, and both are large savings (BENCHMARKS.md, "Levers and their switches"):

- the MLM head (transform + 4^k-way decoder) runs only on the masked positions (about 15% of the tokens);
- packed rows: several windows ``[CLS] .. [SEP][CLS] .. [SEP][PAD]..`` share one row, with block-diagonal
  attention and positions restarting at 0 in each window, so little compute is spent on padding.

Parameter names and shapes are identical to ``transformers.BertForMaskedLM`` (no pooler, decoder tied to the
word embeddings), so ``state_dict()`` loads into it with ``strict=True`` and export is a plain state-dict
save; the tests prove logits equality against transformers. Attention goes through
``torch.nn.functional.scaled_dot_product_attention``. Token-type ids are always 0 (single-segment inputs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from transformers import BertConfig
from transformers.activations import ACT2FN

from dnabert.data.tokenizers.kmer import vocab_size
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.components import (
    ATTENTION_BACKENDS,
    IGNORE_INDEX,
    Bert,
    ConfigFromDict,
    MaskedLMHead,
    attention_bias,
    check_attention_backend,
    count_parameters,
    eager_attention,
    flex_attention_for,
    flex_block_mask,
    init_bert_weights,
    masked_lm_loss,
    mlm_logits,
    packed_layout,
)

# Shared pieces re-exported: callers and tests import them from here as before the move to components.
__all__ = [
    "ATTENTION_BACKENDS",
    "IGNORE_INDEX",
    "DnaBertForMaskedLM",
    "DnaBertConfig",
    "attention_bias",
    "count_parameters",
    "masked_lm_loss",
    "packed_layout",
    "preset",
]


@dataclass
class DnaBertConfig(ConfigFromDict):
    """BERT hyper-parameters, field names as in ``transformers.BertConfig`` so the mapping is one-to-one."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise DnabertError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_attention_heads="
                f"{self.num_attention_heads}; pick a head count that divides the hidden size."
            )
        if self.hidden_act not in ACT2FN:
            raise DnabertError(
                f"model.hidden_act={self.hidden_act!r} is unknown; use one of transformers' activations "
                "such as 'gelu', 'gelu_new' or 'relu'."
            )


    def to_hf_config(self) -> BertConfig:
        return BertConfig(**self.to_dict(), pad_token_id=PAD_ID, tie_word_embeddings=True)

    @classmethod
    def from_hf_config(cls, hf_config: BertConfig) -> DnaBertConfig:
        return cls(**{field.name: getattr(hf_config, field.name) for field in dataclasses.fields(cls)})


_PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def preset(name: str, k: int) -> DnaBertConfig:
    """Named model sizes; "bert_base" is the DNABERT paper's model."""
    if name not in _PRESETS:
        raise DnabertError(f"Unknown model preset {name!r}; choose one of {sorted(_PRESETS)}.")
    return DnaBertConfig(vocab_size=vocab_size(k), **_PRESETS[name])


class Embeddings(nn.Module):
    def __init__(self, config: DnaBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        embedded = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings.weight[0]  # token type 0 everywhere
        )
        return self.dropout(self.LayerNorm(embedded))


class SelfAttention(nn.Module):
    def __init__(self, config: DnaBertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.recorded: list[torch.Tensor] | None = None  # a list: probabilities wanted (recording_attention)

    def _split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = projected.shape
        return projected.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        query, key, value = (self._split_heads(layer(hidden)) for layer in (self.query, self.key, self.value))
        if self.recorded is not None:
            if isinstance(mask, BlockMask):
                raise DnabertError("Attention probabilities need one window per row on attention=sdpa, not packed "
                                   "rows on FlexAttention.")
            context, probabilities = eager_attention(query, key, value, mask)
            self.recorded.append(probabilities)
        elif isinstance(mask, BlockMask):
            context = flex_attention_for(hidden.device)(query, key, value, block_mask=mask)
        else:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=self.dropout_prob if self.training else 0.0
            )
        return context.transpose(1, 2).flatten(2)


class ResidualOutput(nn.Module):
    """Projection, dropout, residual add and LayerNorm: BERT's ``attention.output`` and ``output`` blocks."""

    def __init__(self, in_features: int, config: DnaBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Attention(nn.Module):
    def __init__(self, config: DnaBertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = ResidualOutput(config.hidden_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        return self.output(self.self(hidden, mask), hidden)


class Intermediate(nn.Module):
    def __init__(self, config: DnaBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))


class Layer(nn.Module):
    def __init__(self, config: DnaBertConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        attended = self.attention(hidden, mask)
        return self.output(self.intermediate(attended), attended)


class DnaBertForMaskedLM(nn.Module):
    """BERT + MLM head; its ``state_dict()`` has the keys and shapes of ``transformers.BertForMaskedLM``."""

    def __init__(self, config: DnaBertConfig, attention: str = "sdpa") -> None:
        """``attention``: "sdpa" (default; any device, attention dropout) or "flex" (FlexAttention for packed
        rows: block-sparse, so packed rows cost no attention over other windows; no attention dropout, hence
        it requires ``attention_probs_dropout_prob=0``). Rows with one window always use SDPA."""
        super().__init__()
        check_attention_backend(attention, config.attention_probs_dropout_prob)
        self.config = config
        self.attention = attention
        self.bert = Bert(Embeddings(config), (Layer(config) for _ in range(config.num_hidden_layers)))
        self.cls = MaskedLMHead(config, bias_parameter=True)
        self.apply(partial(init_bert_weights, std=config.initializer_range))
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        packed: bool = False,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H); see ``forward`` for the arguments."""
        key_mask = (input_ids != PAD_ID) if attention_mask is None else attention_mask.bool()
        window_ids = None
        if packed:
            window_ids, packed_positions = packed_layout(input_ids)
            position_ids = packed_positions if position_ids is None else position_ids
        elif position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden = self.bert.embeddings(input_ids, position_ids)
        if window_ids is not None and self.attention == "flex":
            return self.bert.encoder(hidden, flex_block_mask(key_mask, window_ids))
        return self.bert.encoder(hidden, attention_bias(key_mask, window_ids))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        packed: bool = False,
        head_on_masked_only: bool = True,
    ) -> torch.Tensor:
        """MLM logits.

        Args:
            input_ids: (B, T) token ids, [PAD]=0 for padding.
            attention_mask: (B, T) 1/True for real tokens; default ``input_ids != PAD_ID``.
            position_ids: (B, T) explicit positions; default 0..T-1, or per-window positions when ``packed``.
            masked_positions: (B, T) bool; when given, returns logits (N, V) of those positions only
                (row-major order, as ``labels[masked_positions]``), else (B, T, V).
            packed: rows hold several windows, each starting with [CLS]: attention stays inside each window
                and positions restart at 0 at each [CLS] (``packed_layout``). Off: one window per row.
            head_on_masked_only: with ``masked_positions``, run the head only on the selected hidden states
                (True, the fast path) or on every position and select afterwards (False, for comparison).
        """
        hidden = self.encode(input_ids, attention_mask, position_ids, packed)
        return mlm_logits(self.cls.predictions, hidden, masked_positions, head_on_masked_only)
