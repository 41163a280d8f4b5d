"""DNABERT-2's encoder: MosaicBERT-style BERT (ALiBi, gated-linear-unit feed-forward) with an MLM head.

The architecture of Zhou et al. (ICLR 2024) as released (zhihan1996/DNABERT-2-117M) and as MultiMolecule
reimplements it: no position embeddings, an ALiBi bias ``-slope[head] * |i - j|`` on the attention scores, a
feed-forward ``wo(gelu(x W_gate) * (x W_value))`` (one fused ``gated_layers`` matrix, no bias), post-LayerNorm
residual blocks, attention dropout 0, BERT's MLM head with the decoder tied to the word embeddings.

Parameter names and shapes are those of the original checkpoint (``bert.encoder.layer.N.attention.self.Wqkv``,
``mlp.gated_layers``, ``mlp.wo``, ``mlp.layernorm``, ``cls.predictions.*``), so the released weights load with
a plain ``load_state_dict`` and the MultiMolecule export is a renaming (``interop.py`` beside this module); the
tests prove logits equality with MultiMolecule's ``DnaBert2ForMaskedLM``. The fused Wqkv is also one matmul instead
of three.

The levers are the BERT family's (dnabert.models.components): packed rows, where ALiBi distances restart in each
window because attention never crosses a window and distances are taken between per-window positions; the MLM
head on masked positions only; FlexAttention. How ALiBi reaches the attention, by backend and row layout:

- ``attention="flex"`` (the GPU recommendation; compiled there, no Triton code of ours, no pinned versions):
  every row, packed or not. ALiBi is the ``score_mod``, key padding (and windows) the block mask, built from
  tile summaries: nothing of size T x T exists, and fine-tuning windows of thousands of tokens cost no bias
  memory. FlexAttention has no backward on CPU and no attention dropout.
- ``attention="sdpa"``, one window per row (any device): the ALiBi term depends only on (head, i, j), so it is
  one (1, heads, T, T) bias in the attention's dtype, built once per forward and shared by every layer and row.
  Key padding enters without a per-row bias (``KeyPaddedAlibi``): an extra query/key channel whose product is 0
  for real keys and -1e4 for padding keys, which underflows to exactly 0 attention weight; the head dimension is
  zero-padded to a multiple of 8 so the fused kernels stay eligible, with SDPA's scale kept at 1/sqrt(head size).
- ``attention="sdpa"``, packed rows or per-row ``position_ids``: ALiBi depends on the row, so the bias is a dense
  (B, heads, T, T) tensor (as MultiMolecule's), computed in float32 then cast to the attention's dtype.

Inside ``components.recording_attention`` (reading a model: ``ModelFamily.attention_probabilities``) the two SDPA
forms are computed eagerly, ALiBi and padding included, and each layer keeps its probabilities; FlexAttention has
no such path.

bf16 autocast and torch.compile (dynamic shapes) are tested on CPU; tests/test_alibi.py proves every form equal
to the dense bias and that the one-window SDPA path allocates no (B, heads, T, T) tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from transformers.activations import ACT2FN

from dnabert.data.tokenizers.special import CLS_ID, PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.components import (
    Bert,
    ConfigFromDict,
    MaskedLMHead,
    attending_keys,
    attention_bias,
    check_attention_backend,
    eager_attention,
    flex_attention_for,
    flex_block_mask,
    init_bert_weights,
    mlm_logits,
    packed_layout,
)

PADDING_SCORE = 1e4  # subtracted from the scores of padding keys: exp(-1e4 + anything real) is exactly 0


@dataclass(frozen=True)
class KeyPaddedAlibi:
    """One-window rows on SDPA: the shared (1, heads, T, T) ALiBi bias plus key padding as an extra channel.

    Queries get ``c`` in the extra channel and keys 0 (attendable) or ``-c``, with ``c^2 / sqrt(head size)`` =
    ``PADDING_SCORE``, so a padding key's score drops by 1e4 and its weight is exactly 0, while a real key's score
    gains an exact 0 (c is split between query and key so both stay far inside fp16's range). The remaining
    extra channels are zeros, padding the head dimension to a multiple of 8: the CPU flash kernel needs equal
    query, key and value widths, the CUDA kernels a multiple of 8.
    """

    alibi: torch.Tensor  # (1, heads, T, T), the attention's dtype
    query_channels: torch.Tensor  # (1, 1, 1, extra): c, then zeros
    key_channels: torch.Tensor  # (B, 1, T, extra): 0 or -c, then zeros

    @classmethod
    def build(cls, alibi: torch.Tensor, attendable: torch.Tensor, head_size: int) -> KeyPaddedAlibi:
        """``alibi`` (1, heads, T, T) already in the attention's dtype; ``attendable`` (B, T) bool."""
        extra = 8 - head_size % 8
        channel = math.sqrt(PADDING_SCORE * math.sqrt(head_size))
        query_channels = F.pad(alibi.new_full((1, 1, 1, 1), channel), (0, extra - 1))
        key_flag = torch.where(attendable, 0.0, -channel).to(alibi.dtype)
        return cls(alibi, query_channels, F.pad(key_flag[:, None, :, None], (0, extra - 1)))

    def widen(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, heads, T, head size) query/key/value with the extra channels (the value's are zeros)."""
        extra = self.query_channels.shape[-1]
        return (torch.cat([query, self.query_channels.expand(*query.shape[:-1], extra)], dim=-1),
                torch.cat([key, self.key_channels.expand(*key.shape[:-1], extra)], dim=-1),
                F.pad(value, (0, extra)))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float) -> torch.Tensor:
        """SDPA over query/key/value widened by the extra channels; the same result as without them."""
        head_size = query.shape[-1]
        context = F.scaled_dot_product_attention(*self.widen(query, key, value), attn_mask=self.alibi,
                                                 dropout_p=dropout_p, scale=head_size**-0.5)
        return context[..., :head_size]

    def probabilities(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attend``'s context computed eagerly, with the probabilities (ALiBi included; padding keys get 0)."""
        head_size = query.shape[-1]
        context, probabilities = eager_attention(*self.widen(query, key, value), self.alibi, scale=head_size**-0.5)
        return context[..., :head_size], probabilities


# What each layer's attention gets: a dense additive float bias (packed rows on SDPA), the shared ALiBi bias with
# key padding as a channel (one-window rows on SDPA), or FlexAttention's (block mask, ALiBi score_mod).
AttentionBias = torch.Tensor | KeyPaddedAlibi | tuple[BlockMask, Callable]



@dataclass
class DnaBert2Config(ConfigFromDict):
    """DNABERT-2 hyper-parameters, field names as in the released config.json (BERT's names).

    ``alibi_starting_size`` is the length the original precomputes its ALiBi table for (it grows it for longer
    inputs); kept so exports carry the published value, it changes no result here (the bias is computed for
    the input's length). ``pad_token_id`` and ``cls_token_id`` come from the tokenizer: the padding row of the
    embedding and the default attention mask, and the token that starts each window of a packed row. The defaults
    are this project's BPE tokenizer's, which keeps the k-mer vocabulary's special ids ([PAD]=0, [CLS]=2;
    dnabert.data.tokenizers); the published DNABERT-2 tokenizer has [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4
    (an import takes them from the directory's tokenizer.json).
    """

    label: ClassVar[str] = "DNABERT-2 model"

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    alibi_starting_size: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = PAD_ID
    cls_token_id: int = CLS_ID

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise DnabertError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_attention_heads="
                f"{self.num_attention_heads}; pick a head count that divides the hidden size."
            )
        if self.hidden_act not in ACT2FN:
            raise DnabertError(
                f"model.hidden_act={self.hidden_act!r} is unknown; use one of transformers' activations "
                "such as 'gelu' (DNABERT-2's)."
            )
        for name in ("pad_token_id", "cls_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise DnabertError(
                    f"model.{name}={getattr(self, name)} is outside the vocabulary (size {self.vocab_size}); "
                    "take the special-token ids from the tokenizer."
                )



_PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def preset(name: str, vocab_size: int = 4096, **overrides) -> DnaBert2Config:
    """Named sizes: "base" is DNABERT-2-117M (117.07 M parameters at vocabulary 4096), "tiny" a CPU demo
    size (1.07 M parameters at vocabulary 4096, half of them the embedding), "small" in between."""
    if name not in _PRESETS:
        raise DnabertError(f"Unknown DNABERT-2 model preset {name!r}; choose one of {sorted(_PRESETS)}.")
    return DnaBert2Config(vocab_size=vocab_size, **{**_PRESETS[name], **overrides})


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ... for n a
    power of two; otherwise those of the nearest lower power of two, then every other slope of twice that."""
    if math.log2(num_heads).is_integer():
        start = 2 ** (-8 / num_heads)
        return [start ** (head + 1) for head in range(num_heads)]
    lower = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(lower) + alibi_slopes(2 * lower)[0::2][: num_heads - lower]


class Embeddings(nn.Module):
    """Word + token-type embeddings (type 0 everywhere), LayerNorm, dropout; no position embeddings."""

    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(embedded))


class SelfAttention(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.recorded: list[torch.Tensor] | None = None  # a list: probabilities wanted (recording_attention)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        """``bias``: see ``AttentionBias``."""
        batch, length, width = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head size)
        dropout_p = self.dropout_prob if self.training else 0.0
        if self.recorded is not None:
            context = self._recorded_attention(query, key, value, bias)
        elif isinstance(bias, tuple):
            block_mask, score_mod = bias
            context = flex_attention_for(hidden.device)(query, key, value, score_mod=score_mod, block_mask=block_mask)
        elif isinstance(bias, KeyPaddedAlibi):
            context = bias.attend(query, key, value, dropout_p)
        else:  # a bias in the query's dtype (no copy when encode cast it) keeps the fused CUDA kernels eligible
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype),
                                                     dropout_p=dropout_p)
        return context.transpose(1, 2).flatten(2)

    def _recorded_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            bias: AttentionBias) -> torch.Tensor:
        """The eager path of ``recording_attention``: the same context, its probabilities appended."""
        if isinstance(bias, tuple):
            raise DnabertError("Attention probabilities need attention=sdpa; FlexAttention computes them inside "
                               "its kernel only.")
        if isinstance(bias, KeyPaddedAlibi):
            context, probabilities = bias.probabilities(query, key, value)
        else:
            context, probabilities = eager_attention(query, key, value, bias)
        self.recorded.append(probabilities)
        return context


class SelfOutput(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Attention(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class GatedLinearUnitMLP(nn.Module):
    """``LayerNorm(x + wo(dropout(act(x W_gate) * x W_value)))``; ``gated_layers`` holds [W_gate; W_value]."""

    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, value = self.gated_layers(hidden).chunk(2, dim=-1)
        return self.layernorm(hidden + self.wo(self.dropout(self.activation(gate) * value)))


class Layer(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GatedLinearUnitMLP(config)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        return self.mlp(self.attention(hidden, bias))


class DnaBert2ForMaskedLM(nn.Module):
    """DNABERT-2 + MLM head; ``state_dict()`` has the original checkpoint's keys (decoder tied to embeddings)."""

    def __init__(self, config: DnaBert2Config, attention: str = "sdpa") -> None:
        """``attention``: "sdpa" (default; any device, attention dropout) or "flex" (FlexAttention for every
        row: ALiBi as a score_mod, key padding and windows as a block mask, no T x T tensor; the GPU
        recommendation; requires ``attention_probs_dropout_prob=0``, and has no backward on CPU)."""
        super().__init__()
        check_attention_backend(attention, config.attention_probs_dropout_prob)
        self.config = config
        self.attention = attention
        self.bert = Bert(Embeddings(config), (Layer(config) for _ in range(config.num_hidden_layers)))
        self.cls = MaskedLMHead(config, bias_parameter=False)
        self.register_buffer("alibi_slopes", torch.tensor(alibi_slopes(config.num_attention_heads)), persistent=False)
        self.apply(partial(init_bert_weights, std=config.initializer_range))
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _apply(self, fn, recurse: bool = True):
        """``.to(dtype)``/``.half()`` cast buffers too: the ALiBi slopes stay float32 on the new device (bf16 would
        round most of them by up to 2^-8, shifting every distant score)."""
        module = super()._apply(fn, recurse)
        slopes = alibi_slopes(self.config.num_attention_heads)
        self.alibi_slopes = torch.tensor(slopes, dtype=torch.float32, device=self.alibi_slopes.device)
        return module

    def _alibi(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(B|1, heads, T, T) float32 ``-slope * |p_query - p_key|``."""
        distance = (position_ids[:, :, None] - position_ids[:, None, :]).abs().float()
        return -self.alibi_slopes[None, :, None, None] * distance[:, None]

    def _alibi_score_mod(self, positions: torch.Tensor | None) -> Callable:
        """FlexAttention's form of ``_alibi``, in float32 inside the kernel: distances between ``positions`` (B, T),
        or between the token indices when None (one window per row: no position loads in the kernel)."""
        slopes = self.alibi_slopes
        if positions is None:
            def alibi(score, batch, head, query, key):
                return score - slopes[head] * (query - key).abs()
        else:
            def alibi(score, batch, head, query, key):
                return score - slopes[head] * (positions[batch, query] - positions[batch, key]).abs()
        return alibi

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        packed: bool = False,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H); see ``forward`` for the arguments."""
        key_mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        window_ids = None
        if packed:
            window_ids, packed_positions = packed_layout(input_ids, self.config.cls_token_id)
            position_ids = packed_positions if position_ids is None else position_ids
        hidden = self.bert.embeddings(input_ids)
        if self.attention == "flex":
            positions = None if position_ids is None else position_ids.expand_as(input_ids)
            return self.bert.encoder(hidden, (flex_block_mask(key_mask, window_ids), self._alibi_score_mod(positions)))
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        # One bias in the attention's dtype for all layers: a per-layer cast would keep a copy per layer for backward.
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        if window_ids is None and position_ids.shape[0] == 1:  # ALiBi the same for every row: shared, no B x T^2
            head_size = self.config.hidden_size // self.config.num_attention_heads
            shared = KeyPaddedAlibi.build(self._alibi(position_ids).to(dtype), attending_keys(key_mask), head_size)
            return self.bert.encoder(hidden, shared)
        allowed = attention_bias(key_mask, window_ids)
        bias = torch.where(allowed, self._alibi(position_ids), float("-inf"))
        return self.bert.encoder(hidden, bias.to(dtype))

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
            input_ids: (B, T) token ids, ``config.pad_token_id`` for padding.
            attention_mask: (B, T) 1/True for real tokens; default ``input_ids != config.pad_token_id``.
            position_ids: (B, T) explicit positions for the ALiBi distances; default 0..T-1, or per-window
                positions when ``packed``. (1, T) positions are shared by every row (one bias on SDPA); (B, T)
                ones give SDPA a dense per-row bias.
            masked_positions: (B, T) bool; when given, returns logits (N, V) of those positions only
                (row-major order, as ``labels[masked_positions]``), else (B, T, V).
            packed: rows hold several windows, each starting with ``config.cls_token_id``: attention stays
                inside each window and ALiBi distances restart at each window. Off: one window per row.
            head_on_masked_only: with ``masked_positions``, run the head only on the selected hidden states
                (True, the fast path) or on every position and select afterwards (False, for comparison).
        """
        hidden = self.encode(input_ids, attention_mask, position_ids, packed)
        return mlm_logits(self.cls.predictions, hidden, masked_positions, head_on_masked_only)
