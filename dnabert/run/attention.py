"""Attention maps of one or a few sequences: per layer and head, over tokens and projected onto nucleotides.

The probabilities come from the family (``ModelFamily.attention_probabilities``: an eager pass whose output
equals the model's SDPA forward; DNABERT-2's include its ALiBi bias). A sequence must fit one window: attention
does not cross windows, so there is no map between bases of different windows.

Projection onto nucleotides, both axes alike: ``A_nt = P A P^T`` over the sequence's tokens ([CLS] and [SEP]
left out), where row j of P (bases x tokens) averages the tokens whose span holds base j (k-mers: the up to k
covering k-mers; BPE: its one token). So base a attends to base b with the mean over the token pairs covering
(a, b); rows then sum to the attention that base pays to sequence tokens (less than 1: [CLS]/[SEP] take the rest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dnabert.data.labelled import token_windows
from dnabert.errors import DnabertError
from dnabert.models import get_family
from dnabert.run.inference import LoadedModel, SequenceRecord, token_spans


@dataclass
class AttentionMaps:
    """One sequence's maps for the chosen layers (1-based numbers in `layers`): `tokens` (layers, heads, T, T)
    over the window's tokens, [CLS] first and [SEP] last; `nucleotides` (layers, heads, L, L)."""

    record: SequenceRecord
    layers: list[int]
    token_ids: np.ndarray
    token_starts: np.ndarray
    token_ends: np.ndarray
    tokens: np.ndarray
    nucleotides: np.ndarray


def covering_matrix(starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """(length, tokens): row j is 1/c over the c tokens whose span [start, end) holds base j, 0 elsewhere."""
    bases = np.arange(length)[:, None]
    covers = ((bases >= starts[None, :]) & (bases < ends[None, :])).astype(np.float64)
    return covers / covers.sum(axis=1, keepdims=True)


def parse_layers(text: str, num_layers: int) -> list[int]:
    """`last`, `all` or comma-separated 1-based layer numbers."""
    if text == "last":
        return [num_layers]
    if text == "all":
        return list(range(1, num_layers + 1))
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        layers = []
    if not layers or any(not 1 <= layer <= num_layers for layer in layers):
        raise DnabertError(f"--layers {text}: give last, all or layer numbers 1..{num_layers}, comma-separated.")
    return layers


def attention_maps(model: LoadedModel, record: SequenceRecord, layers: list[int]) -> AttentionMaps:
    ids = model.tokenize([record.sequence])[0]
    windows = token_windows(ids, model.max_positions)
    if len(windows) > 1:
        raise DnabertError(f"sequence {record.id!r} has {len(ids)} tokens, more than one window of "
                           f"{model.max_positions - 2}; attention does not cross windows: pass a shorter stretch"
                           " (or a larger --max-positions where the model allows it).")
    input_ids = torch.from_numpy(windows[0])[None].to(model.device)
    per_layer = get_family(model.backbone.family).attention_probabilities(model.encoder, input_ids)
    tokens = torch.stack([per_layer[layer - 1][0] for layer in layers]).cpu().double().numpy()
    starts, ends = token_spans(model, ids, len(record.sequence))
    projection = covering_matrix(starts, ends, len(record.sequence))
    inner = tokens[..., 1:len(ids) + 1, 1:len(ids) + 1]
    nucleotides = projection @ inner @ projection.T
    return AttentionMaps(record, layers, windows[0], starts, ends, tokens.astype(np.float32),
                         nucleotides.astype(np.float32))


def file_stem(record_id: str) -> str:
    """A record id as a safe file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._") or "sequence"


def save_maps(maps: AttentionMaps, out_dir: Path) -> list[Path]:
    """`<id>.npz` (sequence, layers, token_ids, token_start/token_end in bases, token_attention,
    nucleotide_attention), and per layer `<id>_layer<N>.png` (mean over heads) and `<id>_layer<N>_heads.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem(maps.record.id)
    arrays = out_dir / f"{stem}.npz"
    np.savez_compressed(arrays, sequence=np.array(maps.record.sequence), layers=np.array(maps.layers),
                        token_ids=maps.token_ids, token_start=maps.token_starts, token_end=maps.token_ends,
                        token_attention=maps.tokens, nucleotide_attention=maps.nucleotides)
    paths = [arrays]
    for index, layer in enumerate(maps.layers):
        paths += plot_layer(maps, index, out_dir / f"{stem}_layer{layer}")
    return paths


def plot_layer(maps: AttentionMaps, index: int, stem: Path) -> list[Path]:
    """The layer's nucleotide attention, mean over heads (one panel) and head by head (a grid), as heat maps: rows
    are the attending bases (queries), columns the attended ones (keys)."""
    # Imported here: matplotlib adds about a second to a start, and only this command draws.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer, sequence = maps.layers[index], maps.record.sequence
    heads = maps.nucleotides[index]
    mean = heads.mean(axis=0)
    figure, axis = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    _heat_map(figure, axis, mean, sequence, detailed=True)
    axis.set_title(f"{maps.record.id}: layer {layer}, mean over {len(heads)} heads")
    mean_path = stem.with_suffix(".png")
    figure.savefig(mean_path, dpi=130)
    plt.close(figure)

    columns = int(np.ceil(np.sqrt(len(heads))))
    rows = int(np.ceil(len(heads) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False,
                                constrained_layout=True)
    for head, axis in enumerate(axes.flat):
        if head < len(heads):
            _heat_map(figure, axis, heads[head], sequence, detailed=False)
            axis.set_title(f"head {head + 1}", fontsize=9)
        else:
            axis.axis("off")
    figure.suptitle(f"{maps.record.id}: layer {layer}, each head")
    heads_path = stem.with_name(stem.name + "_heads.png")
    figure.savefig(heads_path, dpi=110)
    plt.close(figure)
    return [mean_path, heads_path]


def _heat_map(figure, axis, values: np.ndarray, sequence: str, detailed: bool) -> None:
    """Bases on both axes: letters when they fit (at most 60 bases on the large panel), else positions."""
    image = axis.imshow(values, cmap="viridis", interpolation="nearest")  # the panel's own range: small contrasts show
    length = len(sequence)
    if detailed and length <= 60:
        ticks = np.arange(length)
        axis.set_xticks(ticks, list(sequence), fontsize=6, family="monospace")
        axis.set_yticks(ticks, list(sequence), fontsize=6, family="monospace")
    else:
        step = max(1, int(np.ceil(length / 6 / 10)) * 10)
        ticks = np.arange(0, length, step)
        axis.set_xticks(ticks, [str(tick + 1) for tick in ticks], fontsize=7)
        axis.set_yticks(ticks, [str(tick + 1) for tick in ticks], fontsize=7)
    colorbar = figure.colorbar(image, ax=axis, shrink=0.8 if detailed else 0.7)
    colorbar.ax.tick_params(labelsize=7 if detailed else 6)
    if detailed:
        axis.set_xlabel("attended base (key)")
        axis.set_ylabel("attending base (query)")
        colorbar.set_label("attention probability")
