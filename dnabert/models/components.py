"""Pieces every model family shares: packed-row layout, attention masks, the masked-only MLM head, the loss.

Each family (``dnabert``: BERT over k-mers, ``dnabert2``: MosaicBERT-style over BPE) builds its own layers; what
is here is the part of the training contract that does not depend on the architecture, so the speed levers
(packed rows, masked-only head, FlexAttention) mean the same thing in every family.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers.activations import ACT2FN

from dnabert.data.tokenizers.special import CLS_ID
from dnabert.errors import DnabertError

IGNORE_INDEX = -100
ATTENTION_BACKENDS = ("sdpa", "flex")


def check_attention_backend(attention: str, attention_dropout: float) -> None:
    """Refuse an unknown backend, and FlexAttention with attention dropout (it has none)."""
    if attention not in ATTENTION_BACKENDS:
        raise DnabertError(f"model attention={attention!r} is unknown; choose one of {ATTENTION_BACKENDS}.")
    if attention == "flex" and attention_dropout > 0:
        raise DnabertError(
            "FlexAttention has no attention dropout: set model.attention_probs_dropout_prob=0 "
            "or use the sdpa attention."
        )


def packed_layout(input_ids: torch.Tensor, cls_token_id: int = CLS_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Window index and position-within-window of every token of rows that hold several windows.

    A window starts at each ``cls_token_id`` (default: the k-mer vocabulary's [CLS]): window id = number of
    [CLS] seen so far, position = distance to that [CLS]. Returns ``(window_ids, position_ids)``, both (B, T)
    long. Trailing padding belongs to the last window (it is excluded from attention as a key anyway).
    """
    is_cls = input_ids == cls_token_id
    window_ids = is_cls.long().cumsum(dim=1)
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    window_start = torch.where(is_cls, index, torch.zeros_like(index)).cummax(dim=1).values
    return window_ids, index - window_start


def attending_keys(key_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) keys a query of a one-window row may attend to: the real ones, or every key of a row without any
    real token, so that row never has an empty softmax (all-False gives NaN in SDPA, and NaN would leak into the
    gradients). Real tokens are unaffected."""
    return key_mask | ~key_mask.any(dim=1, keepdim=True)


def attention_bias(key_mask: torch.Tensor, window_ids: torch.Tensor | None) -> torch.Tensor:
    """Boolean mask for SDPA: True where a query may attend to a key.

    One window per row (``window_ids`` None): a (B, 1, 1, T) key-padding mask (``attending_keys``), which SDPA
    broadcasts over the queries and which keeps the memory-efficient kernel usable on GPU (a dense (B, 1, T, T)
    mask costs T^2 memory per row).

    Packed rows: a dense (B, 1, T, T) mask, keys real and in the query's window; every token may also attend
    to itself, so a padding query never has an empty row. Real tokens are unaffected either way.
    """
    if window_ids is None:
        return attending_keys(key_mask)[:, None, None, :]
    allowed = key_mask[:, None, :] & (window_ids[:, :, None] == window_ids[:, None, :])
    diagonal = torch.eye(key_mask.shape[1], dtype=torch.bool, device=key_mask.device)
    return (allowed | diagonal)[:, None, :, :]


FLEX_BLOCK = 128  # FlexAttention's tile (its default sparse block size)


def flex_block_mask(key_mask: torch.Tensor, window_ids: torch.Tensor | None = None) -> BlockMask:
    """FlexAttention's block-sparse form of ``attention_bias``, built from per-tile summaries of the row.

    ``create_block_mask`` would evaluate the mask on a (B, T, T) grid; here each tile of 128 keys is summarised by
    its number of attendable keys and its first and last window (window ids never decrease along a row), so the
    largest tensor is the (B, T/128, T/128) tile table. A tile pair is computed when the windows of its queries
    and keys overlap and it holds an attendable key (or it is on the diagonal: a packed token attends to itself);
    it is "full" (no mask evaluated) when both tiles are complete and lie in one window with every key
    attendable. Computing a tile that is entirely masked is harmless: the mask_mod still decides every score.
    Packed rows cost the sum of squared window lengths, not T^2; one-window rows skip tiles of padding only.
    """
    batch, length = key_mask.shape
    device = key_mask.device
    if window_ids is None:
        allowed = attending_keys(key_mask)

        def mask_mod(batch, head, query, key):
            return allowed[batch, key]

        window_ids = torch.zeros_like(key_mask, dtype=torch.long)
    else:
        allowed = key_mask

        def mask_mod(batch, head, query, key):
            return (allowed[batch, key] & (window_ids[batch, query] == window_ids[batch, key])) | (query == key)

    tiles = -(-length // FLEX_BLOCK)
    starts = torch.arange(tiles, device=device) * FLEX_BLOCK
    attendable = F.pad(allowed, (0, tiles * FLEX_BLOCK - length)).view(batch, tiles, FLEX_BLOCK).sum(dim=-1)
    first, last = window_ids[:, starts], window_ids[:, (starts + FLEX_BLOCK - 1).clamp(max=length - 1)]
    overlap = (first[:, :, None] <= last[:, None, :]) & (first[:, None, :] <= last[:, :, None])  # (B, q, k)
    diagonal = torch.eye(tiles, dtype=torch.bool, device=device)
    computed = (overlap & (attendable[:, None, :] > 0)) | diagonal
    one_window = first == last
    complete = starts + FLEX_BLOCK <= length
    full = ((one_window & complete)[:, :, None] & (one_window & (attendable == FLEX_BLOCK))[:, None, :]
            & (first[:, :, None] == first[:, None, :]))

    def ordered(tile_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, q) counts and (B, 1, q, k) key-tile indices, the set tiles first (BlockMask's layout)."""
        table = tile_table[:, None].to(torch.int32)
        return table.sum(dim=-1, dtype=torch.int32), torch.argsort(table, dim=-1, descending=True, stable=True).int()

    return BlockMask.from_kv_blocks(*ordered(computed & ~full), *ordered(full), BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(length, length))


_COMPILED_FLEX = None


def flex_attention_for(device: torch.device):
    """FlexAttention needs torch.compile for its fused kernel on GPU; on CPU (tests) the eager reference runs."""
    global _COMPILED_FLEX
    if device.type != "cuda":
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``scaled_dot_product_attention`` computes without dropout, step by step so that the probabilities
    exist: ``softmax(q k^T * scale + mask) v``, in float32. ``mask``: boolean (True where a query may attend, as
    SDPA's) or an additive bias. Returns (context in the value's dtype, probabilities (B, heads, T, T) float32)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query.float() @ key.float().transpose(-2, -1)) * scale
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probabilities = scores.softmax(dim=-1)
    return (probabilities @ value.float()).to(value.dtype), probabilities


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within it, each attention module of ``model`` that offers its probabilities (an attribute ``recorded``,
    None otherwise) computes them with ``eager_attention`` and appends them, layer after layer, to the list this
    yields; its output is the one SDPA gives. For reading a model (``ModelFamily.attention_probabilities``), not
    for training: the T x T probabilities are materialised."""
    modules = [module for module in model.modules() if hasattr(module, "recorded")]
    recorded: list[torch.Tensor] = []
    for module in modules:
        module.recorded = recorded
    try:
        yield recorded
    finally:
        for module in modules:
            module.recorded = None


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation (also MosaicBERT's): normal(0, std) weights, zero biases, LayerNorm 1/0, a zero
    padding embedding. Use as ``model.apply(partial(init_bert_weights, std=...))``."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mlm_logits(
    head: nn.Module, hidden: torch.Tensor, masked_positions: torch.Tensor | None, head_on_masked_only: bool
) -> torch.Tensor:
    """The MLM head on (B, T, H) hidden states: (B, T, V), or (N, V) for the ``masked_positions`` (row-major,
    as ``labels[masked_positions]``), computed on those positions only (the lever) or on all then selected."""
    if masked_positions is None:
        return head(hidden)
    if head_on_masked_only:
        return head(hidden[masked_positions])
    return head(hidden)[masked_positions]


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked tokens; logits (N, V) or (B, T, V), labels (N,) or (B, T), -100 ignored.

    Computed in float32 so that a bf16/fp16 forward keeps precision in the log-sum-exp over the vocabulary.
    A micro-batch with no masked token (possible with a few very short windows) gives 0 with zero gradients,
    not the NaN of a mean over nothing, which would cost the whole optimiser step.
    """
    labels = labels.flatten()
    total = F.cross_entropy(logits.flatten(0, -2).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once, as in the model cards)."""
    return sum(parameter.numel() for parameter in model.parameters())


class ConfigFromDict:
    """``from_dict``/``to_dict`` for the families' config dataclasses: checkpoint hyper-parameters and Hydra give
    plain dicts, and a misspelt field must be a clear error, not a TypeError from the dataclass."""

    label: ClassVar[str] = "model"

    @classmethod
    def from_dict(cls, values: dict) -> Any:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DnabertError(f"Unknown {cls.label} config field(s) {unknown}; allowed: {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Encoder(nn.Module):
    """The stack of transformer layers; each family supplies its own layers and its own mask or bias type."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


class HeadTransform(nn.Module):
    """The MLM head's dense + activation + LayerNorm, the same in BERT and MosaicBERT (transformers' names)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.activation(self.dense(hidden)))


class Bert(nn.Module):
    """Embeddings + encoder, no pooler: the attribute layout of transformers' ``BertModel`` (and of DNABERT-2's MLM
    model, which has no pooler either), so both families' checkpoints keep their key names."""

    def __init__(self, embeddings: nn.Module, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = Encoder(layers)


class Predictions(nn.Module):
    """The MLM head's transform and decoder (the model ties the decoder's weight to the word embeddings).
    ``bias_parameter``: transformers' BERT also lists the decoder's bias as ``predictions.bias``; DNABERT-2 does not."""

    def __init__(self, config: Any, bias_parameter: bool) -> None:
        super().__init__()
        self.transform = HeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if bias_parameter:
            self.bias = nn.Parameter(torch.zeros(config.vocab_size))
            self.decoder.bias = self.bias  # one bias, listed under both names as in transformers

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class MaskedLMHead(nn.Module):
    """``cls.predictions``: the MLM head under transformers' attribute names."""

    def __init__(self, config: Any, bias_parameter: bool) -> None:
        super().__init__()
        self.predictions = Predictions(config, bias_parameter)
