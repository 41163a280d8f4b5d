"""A compact BERT encoder with a masked-language-model head, written for DNABERT pretraining.

Why our own module instead of wrapping transformers' ``BertForMaskedLM``: training needs two things that model
does not offer, and both are large savings (docs/performance notes):

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

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import BertConfig
from transformers.activations import ACT2FN

from dnabert.data.tokenizers.kmer import CLS_ID, PAD_ID, vocab_size
from dnabert.errors import DnabertError

IGNORE_INDEX = -100
ATTENTION_BACKENDS = ("sdpa", "flex")


@dataclass
class ModelConfig:
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

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Build from a plain dict (checkpoint hyper-parameters, Hydra), rejecting unknown fields clearly."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DnabertError(f"Unknown model config field(s) {unknown}; allowed: {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_hf_config(self) -> BertConfig:
        return BertConfig(**self.to_dict(), pad_token_id=PAD_ID, tie_word_embeddings=True)

    @classmethod
    def from_hf_config(cls, hf_config: BertConfig) -> ModelConfig:
        return cls(**{field.name: getattr(hf_config, field.name) for field in dataclasses.fields(cls)})


_PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def preset(name: str, k: int) -> ModelConfig:
    """Named model sizes; "bert_base" is the DNABERT paper's model."""
    if name not in _PRESETS:
        raise DnabertError(f"Unknown model preset {name!r}; choose one of {sorted(_PRESETS)}.")
    return ModelConfig(vocab_size=vocab_size(k), **_PRESETS[name])


def packed_layout(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Window index and position-within-window of every token of rows that hold several windows.

    A window starts at each [CLS]: window id = number of [CLS] seen so far, position = distance to that [CLS].
    Returns ``(window_ids, position_ids)``, both (B, T) long. Trailing padding belongs to the last window (it
    is excluded from attention as a key anyway).
    """
    is_cls = input_ids == CLS_ID
    window_ids = is_cls.long().cumsum(dim=1)
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    window_start = torch.where(is_cls, index, torch.zeros_like(index)).cummax(dim=1).values
    return window_ids, index - window_start


def attention_bias(key_mask: torch.Tensor, window_ids: torch.Tensor | None) -> torch.Tensor:
    """Boolean mask for SDPA: True where a query may attend to a key.

    One window per row (``window_ids`` None): a (B, 1, 1, T) key-padding mask, which SDPA broadcasts over the
    queries and which keeps the memory-efficient kernel usable on GPU (a dense (B, 1, T, T) mask costs T^2
    memory per row). A row without any real token may attend to everything, so it never has an empty softmax
    (all-False gives NaN in SDPA, and NaN would leak into the gradients).

    Packed rows: a dense (B, 1, T, T) mask, keys real and in the query's window; every token may also attend
    to itself, so a padding query never has an empty row. Real tokens are unaffected either way.
    """
    if window_ids is None:
        return (key_mask | ~key_mask.any(dim=1, keepdim=True))[:, None, None, :]
    allowed = key_mask[:, None, :] & (window_ids[:, :, None] == window_ids[:, None, :])
    diagonal = torch.eye(key_mask.shape[1], dtype=torch.bool, device=key_mask.device)
    return (allowed | diagonal)[:, None, :, :]


def flex_block_mask(key_mask: torch.Tensor, window_ids: torch.Tensor) -> BlockMask:
    """FlexAttention's block-sparse form of ``attention_bias`` for packed rows: only the tiles that hold a
    window's keys and queries are computed, so attention costs the sum of squared window lengths, not T^2."""

    def same_window(batch, head, query, key):
        real_key = key_mask[batch, key]
        return (real_key & (window_ids[batch, query] == window_ids[batch, key])) | (query == key)

    batch, length = key_mask.shape
    return create_block_mask(same_window, batch, None, length, length, device=key_mask.device)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
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
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def _split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = projected.shape
        return projected.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        query, key, value = (self._split_heads(layer(hidden)) for layer in (self.query, self.key, self.value))
        if isinstance(mask, BlockMask):
            context = _flex_attention_for(hidden.device)(query, key, value, block_mask=mask)
        else:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=self.dropout_prob if self.training else 0.0
            )
        return context.transpose(1, 2).flatten(2)


_COMPILED_FLEX = None


def _flex_attention_for(device: torch.device):
    """FlexAttention needs torch.compile for its fused kernel on GPU; on CPU (tests) the eager reference runs."""
    global _COMPILED_FLEX
    if device.type != "cuda":
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


class ResidualOutput(nn.Module):
    """Projection, dropout, residual add and LayerNorm: BERT's ``attention.output`` and ``output`` blocks."""

    def __init__(self, in_features: int, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = ResidualOutput(config.hidden_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        return self.output(self.self(hidden, mask), hidden)


class Intermediate(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))


class Layer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        attended = self.attention(hidden, mask)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


class Bert(nn.Module):
    """Embeddings + encoder, no pooler (the attribute layout of transformers' ``BertModel``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)


class HeadTransform(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.activation(self.dense(hidden)))


class Predictions(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.transform = HeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one bias, listed under both names as in transformers

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class MaskedLMHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.predictions = Predictions(config)


class DnaBertForMaskedLM(nn.Module):
    """BERT + MLM head; its ``state_dict()`` has the keys and shapes of ``transformers.BertForMaskedLM``."""

    def __init__(self, config: ModelConfig, attention: str = "sdpa") -> None:
        """``attention``: "sdpa" (default; any device, attention dropout) or "flex" (FlexAttention for packed
        rows: block-sparse, so packed rows cost no attention over other windows; no attention dropout, hence
        it requires ``attention_probs_dropout_prob=0``). Rows with one window always use SDPA."""
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise DnabertError(f"model attention={attention!r} is unknown; choose one of {ATTENTION_BACKENDS}.")
        if attention == "flex" and config.attention_probs_dropout_prob > 0:
            raise DnabertError(
                "FlexAttention has no attention dropout: set model.attention_probs_dropout_prob=0 "
                "or use the sdpa attention."
            )
        self.config = config
        self.attention = attention
        self.bert = Bert(config)
        self.cls = MaskedLMHead(config)
        self.apply(self._init_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: normal(0, initializer_range) weights, zero biases (the decoder's bias is
        ``cls.predictions.bias``), LayerNorm 1/0, a zero [PAD] embedding."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
        if masked_positions is None:
            return self.cls.predictions(hidden)
        if head_on_masked_only:
            return self.cls.predictions(hidden[masked_positions])
        return self.cls.predictions(hidden)[masked_positions]


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked tokens; logits (N, V) or (B, T, V), labels (N,) or (B, T), -100 ignored.

    Computed in float32 so that a bf16/fp16 forward keeps precision in the log-sum-exp over 4^k k-mers.
    A micro-batch with no masked token (possible with a few very short windows) gives 0 with zero gradients,
    not the NaN of a mean over nothing, which would cost the whole optimiser step.
    """
    labels = labels.flatten()
    total = F.cross_entropy(logits.flatten(0, -2).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once, as in the DNABERT model card)."""
    return sum(parameter.numel() for parameter in model.parameters())

