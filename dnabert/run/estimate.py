"""Compute estimate: parameters, FLOPs, tokens, memory and wall time of a pretraining run, before launching.

Users of the original DNABERT learned the cost (about 25 days on 8 RTX 2080 Ti) only after the fact. This
module answers "how long and how much memory?" from the model shape and the run settings, by stated
arithmetic:

- Training FLOPs per real token (forward + backward = 3 x forward):
  ``6 * N_matmul`` (the encoder's weight matrices, 2 FLOPs per multiply-add) ``+ 12 * layers * hidden * s``
  (attention scores and their product with the values, s = length of the token's sequence)
  ``+ 6 * (hidden^2 + hidden * vocab)`` per *masked* token only (the MLM head runs on masked positions).
  Check: the encoder forward of BERT-base k=6 on one 512-token sequence gives 96.6 GFLOPs; the MultiMolecule
  model card reports 96.9 GFLOPs (48.4 G MACs).
- DNABERT-2 (``dnabert.models.dnabert2``' cost; its config or MultiMolecule's): no position embeddings (ALiBi; its
  bias is element-wise, no matmul FLOPs), and the gated-linear-unit feed-forward has three hidden x intermediate
  matrices (gate, value, output) instead of two, so ``N_matmul = layers * (4 h^2 + 3 h * ffn)``. Check: 125.6
  GFLOPs forward at 512 tokens for DNABERT-2-117M; the MultiMolecule card reports 125.83 GFLOPs (62.92 G MACs).
  At 128 tokens training costs 0.70 GFLOPs per token.
- Real tokens: the "original" length rule makes half the sequences full length and half of uniform
  random length, so the mean is about 3/4 of the maximum; "fixed" makes every sequence full length. BPE windows
  (DNABERT-2, no k) are cut to the token budget, so every row is counted full.
- MFU is counted on useful (real-token) FLOPs, as usual; padded batches execute more, reported separately.
- Memory per GPU: 16 bytes per parameter (fp32 weights, fp32 gradients, AdamW's two fp32 moments) plus bf16
  activations of one micro-batch per layer ``34 * s * b * h`` bytes (Korthikanti et al. 2022, no
  recomputation), ``+ 5 * heads * s^2 * b`` bytes when attention materialises its score matrix (eager
  attention; SDPA/flash kernels do not), plus the head's logits on masked tokens (bf16 logits + fp32
  softmax: 6 bytes per entry). DNABERT-2's feed-forward saves ``3 h + 8 ffn`` bytes per token instead of
  ``19 h`` (its input, gate and value halves, activated gate, product, dropout mask), and its ALiBi bias is
  counted as one bf16 (b, heads, s, s) tensor shared by all layers (packed rows on SDPA; an upper bound for
  one-window rows, which share one (1, heads, s, s) bias, and for FlexAttention, which builds none). CUDA
  context and allocator fragmentation (about 1-2 GB) are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf

from dnabert.data.tokenizers.kmer import vocab_size
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, family_of_config, get_family

if TYPE_CHECKING:  # a type only: trial imports Lightning, which the estimate arithmetic does not need
    from dnabert.run.trial import TrialResult

# Dense (no sparsity) 16-bit tensor-core peaks in FLOP/s, from the vendors' datasheets.
# The RTX 2080 Ti figure is fp16 with fp32 accumulation (53.8 T; GeForce Turing halves the 107.6 T
# fp16-accumulate rate), because mixed precision (apex O1, torch.autocast) accumulates matmuls in fp32.
GPU_PEAK_FLOPS: dict[str, float] = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "l40s": 362e12,
    "a10": 125e12,
    "v100": 125e12,
    "rtx 2080 ti": 53.8e12,
}

# Bytes per parameter held by mixed-precision AdamW: fp32 master weights, fp32 gradients, two fp32 moments.
OPTIMIZER_BYTES_PER_PARAM = 16
# The original DNABERT cut: half the windows are full length.
ORIGINAL_FULL_LENGTH_PROBABILITY = 0.5
ORIGINAL_MIN_NUCLEOTIDES = 5


@dataclass(frozen=True)
class Estimate:
    """Everything the projection derived, in plain units (counts, FLOPs, bytes, seconds)."""

    parameters: int
    matmul_parameters: int
    k: int | None
    max_tokens: int
    length_rule: str
    mean_tokens_per_sequence: float
    global_batch_size: int
    micro_batch_size: int
    accumulate_grad_batches: int
    max_steps: int
    gpus: int
    total_sequences: int
    total_tokens: float
    forward_flops_full_sequence: float
    train_flops_per_token: float
    train_flops_per_sequence: float
    train_flops_per_step: float
    train_flops: float
    train_flops_padded: float
    memory_states_bytes: float
    memory_activations_bytes: float
    memory_per_gpu_bytes: float
    gpu_name: str | None
    peak_flops_per_gpu: float | None
    mfu: float | None
    tokens_per_s: float | None
    wall_seconds: float | None
    wall_seconds_padded: float | None


def count_parameters(config: Any) -> tuple[int, int]:
    """(all parameters, encoder weight-matrix parameters) of the MLM model: decoder tied, no pooler. Works for
    any config a family owns (``dnabert.models.family_of_config``: ours, transformers.BertConfig,
    MultiMolecule's DNABERT-2 config); the family's ``cost`` has the formulas."""
    cost = family_of_config(config).cost(config)
    return cost.parameters, cost.matmul_parameters


def token_length_moments(k: int | None, max_tokens: int, length_rule: str) -> tuple[float, float]:
    """Exact (E[tokens], E[tokens^2]) per sequence under a length rule, [CLS]/[SEP] included.

    ``k`` None: BPE windows, cut to the token budget, so every sequence is full length whatever the rule.

    "original": with probability 1/2 a window is full length, else ``max(int(u * M), 5)`` nucleotides with
    M = max_tokens - 2 + k - 1; enumerating the M equally likely values of int(u * M) is exact.
    The last piece of each N-free stretch is ignored (few windows in a chromosome-scale genome).
    """
    if length_rule == "fixed" or k is None:
        return float(max_tokens), float(max_tokens) ** 2
    if length_rule != "original":
        raise DnabertError(f"length_rule={length_rule!r} is unknown; use 'original' or 'fixed'.")
    max_nucleotides = max_tokens - 2 + k - 1
    nucleotides = np.maximum(np.arange(max_nucleotides), ORIGINAL_MIN_NUCLEOTIDES)
    tokens = np.maximum(nucleotides - k + 1, 0) + 2
    full = ORIGINAL_FULL_LENGTH_PROBABILITY
    mean = full * max_tokens + (1 - full) * tokens.mean()
    mean_square = full * max_tokens**2 + (1 - full) * (tokens.astype(np.float64) ** 2).mean()
    return float(mean), float(mean_square)


def peak_flops_for(gpu_name: str) -> float:
    """Dense 16-bit peak of a GPU named as torch.cuda.get_device_name() does, or short ('h100')."""
    name = gpu_name.lower().replace("-", " ")
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):  # "a100" before "a10"
        if key in name or key.replace(" ", "") in name.replace(" ", ""):
            return GPU_PEAK_FLOPS[key]
    raise DnabertError(
        f"gpu_name={gpu_name!r} is not in the peak-FLOP/s table ({', '.join(GPU_PEAK_FLOPS)}); "
        "pick one of those or pass a measured throughput (measured_tokens_per_s)."
    )


def _head_flops_per_masked_token(model_config: Any) -> float:
    hidden = model_config.hidden_size
    return 6 * (hidden * hidden + hidden * model_config.vocab_size)


def train_flops_per_sequence(model_config: Any, tokens: float, tokens_squared: float, mask_rate: float) -> float:
    """Forward + backward FLOPs of one sequence of `tokens` real tokens (E[tokens], E[tokens^2] for a mix)."""
    masked_tokens = mask_rate * (tokens - 2)  # [CLS]/[SEP] are never masked
    return (
        6 * count_parameters(model_config)[1] * tokens
        + 12 * model_config.num_hidden_layers * model_config.hidden_size * tokens_squared
        + _head_flops_per_masked_token(model_config) * masked_tokens
    )


def activation_bytes_per_token_and_layer(model_config: Any) -> float:
    """bf16 activations saved for backward per token and layer (Korthikanti et al. 2022), the family's count:
    BERT 34 h (11 h attention, 19 h MLP, 4 h LayerNorms); a gated feed-forward 3 h + 8 ffn in place of 19 h."""
    return family_of_config(model_config).cost(model_config).activation_bytes_per_token_and_layer


def estimate(
    model_config: Any,
    k: int | None,
    max_tokens: int,
    global_batch_size: int,
    max_steps: int,
    micro_batch_size: int,
    devices: int,
    num_nodes: int,
    gpu_name: str | None = None,
    mfu: float = 0.4,
    length_rule: str = "original",
    measured_tokens_per_s: float | None = None,
    mask_rate: float = 0.15,
    materialised_attention: bool = False,
) -> Estimate:
    """Project the cost of a run; see the module docstring for every formula.

    ``measured_tokens_per_s`` is the whole job's real-token throughput (all GPUs), e.g. ``train/tokens_per_s``
    from a short run; when given it replaces the peak x MFU projection.
    """
    gpus = devices * num_nodes
    if min(global_batch_size, micro_batch_size, gpus, max_steps, max_tokens) <= 0:
        raise DnabertError("global batch, micro-batch, devices, nodes, steps and max_tokens must all be > 0.")
    if global_batch_size % (micro_batch_size * gpus):
        raise DnabertError(
            f"global batch {global_batch_size} is not a multiple of micro-batch {micro_batch_size} x "
            f"{gpus} GPUs; change one of them so gradient accumulation is a whole number."
        )
    parameters, matmul_parameters = count_parameters(model_config)
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    mean_tokens, mean_square_tokens = token_length_moments(k, max_tokens, length_rule)
    if k is None:
        length_rule = "BPE token-budget"
    flops_per_sequence = train_flops_per_sequence(model_config, mean_tokens, mean_square_tokens, mask_rate)
    # A padded batch runs every row at full length, but the head still sees only the real masked tokens.
    padded_flops_per_sequence = train_flops_per_sequence(
        model_config, max_tokens, max_tokens**2, mask_rate
    ) - _head_flops_per_masked_token(model_config) * (mask_rate * (max_tokens - mean_tokens))
    total_sequences = global_batch_size * max_steps
    total_tokens = total_sequences * mean_tokens
    forward_full = (2 * matmul_parameters * max_tokens + 4 * layers * hidden * max_tokens**2)

    states = OPTIMIZER_BYTES_PER_PARAM * parameters
    activations = activation_bytes_per_token_and_layer(model_config) * layers * max_tokens * micro_batch_size
    activations += family_of_config(model_config).cost(model_config).extra_activation_bytes(max_tokens,
                                                                                             micro_batch_size)
    if materialised_attention:
        activations += 5 * model_config.num_attention_heads * max_tokens**2 * micro_batch_size * layers
    activations += 6 * mask_rate * max_tokens * micro_batch_size * model_config.vocab_size

    peak = peak_flops_for(gpu_name) if gpu_name else None
    train_flops = flops_per_sequence * total_sequences
    train_flops_padded = padded_flops_per_sequence * total_sequences
    if measured_tokens_per_s:
        tokens_per_s: float | None = measured_tokens_per_s
        flops_per_s = measured_tokens_per_s * flops_per_sequence / mean_tokens
        achieved_mfu = flops_per_s / (gpus * peak) if peak else None
    elif peak:
        achieved_mfu = mfu
        tokens_per_s = gpus * peak * mfu / (flops_per_sequence / mean_tokens)
    else:
        tokens_per_s = achieved_mfu = None
    wall = total_tokens / tokens_per_s if tokens_per_s else None
    return Estimate(
        parameters=parameters,
        matmul_parameters=matmul_parameters,
        k=k,
        max_tokens=max_tokens,
        length_rule=length_rule,
        mean_tokens_per_sequence=mean_tokens,
        global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size,
        accumulate_grad_batches=global_batch_size // (micro_batch_size * gpus),
        max_steps=max_steps,
        gpus=gpus,
        total_sequences=total_sequences,
        total_tokens=total_tokens,
        forward_flops_full_sequence=forward_full,
        train_flops_per_token=flops_per_sequence / mean_tokens,
        train_flops_per_sequence=flops_per_sequence,
        train_flops_per_step=flops_per_sequence * global_batch_size,
        train_flops=train_flops,
        train_flops_padded=train_flops_padded,
        memory_states_bytes=states,
        memory_activations_bytes=activations,
        memory_per_gpu_bytes=states + activations,
        gpu_name=gpu_name,
        peak_flops_per_gpu=peak,
        mfu=achieved_mfu,
        tokens_per_s=tokens_per_s,
        wall_seconds=wall,
        wall_seconds_padded=wall * train_flops_padded / train_flops if wall else None,
    )


def _si(value: float, unit: str = "") -> str:
    """1.23e19 -> '12.3 E' style with SI prefixes, so big numbers read at a glance."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 48:
        return f"{hours:.1f} h ({hours / 24:.1f} days)"
    if hours >= 1:
        return f"{hours:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _memory(size_bytes: float) -> str:
    return f"{size_bytes / 2**30:.1f} GiB" if size_bytes >= 2**30 else f"{size_bytes / 2**20:.0f} MiB"


def format_estimate(est: Estimate) -> str:
    """A readable multi-line summary of an Estimate, printed by `train.py ... estimate=true`."""
    lines = [
        f"parameters          {est.parameters:,} ({_si(est.matmul_parameters)} in encoder weight matrices)",
        f"batch               {est.global_batch_size} sequences/step = {est.gpus} devices x "
        f"{est.micro_batch_size} x {est.accumulate_grad_batches} accumulation; {est.max_steps:,} steps",
        f"tokens              {est.total_sequences:,} sequences, mean "
        f"{est.mean_tokens_per_sequence:.1f} real tokens each ({est.length_rule} length rule, max "
        f"{est.max_tokens}) = {_si(est.total_tokens)} tokens",
        f"forward FLOPs       {_si(est.forward_flops_full_sequence, 'FLOP')} per full {est.max_tokens}-token "
        "sequence (encoder)",
        f"training FLOPs      {_si(est.train_flops_per_token, 'FLOP')}/token, "
        f"{_si(est.train_flops_per_sequence, 'FLOP')}/sequence, {_si(est.train_flops_per_step, 'FLOP')}/step",
        f"training FLOPs      {est.train_flops:.3g} in all ({est.train_flops_padded:.3g} if every row is "
        f"padded to {est.max_tokens})",
        f"memory per GPU      {_memory(est.memory_per_gpu_bytes)} = "
        f"{_memory(est.memory_states_bytes)} weights+grads+AdamW (16 B/param) + "
        f"{_memory(est.memory_activations_bytes)} bf16 activations of one micro-batch "
        "(+1-2 GiB CUDA context)",
    ]
    if est.wall_seconds is None:
        lines.append("wall time           unknown: give gpu_name (e.g. h100) or a measured tokens/s")
    else:
        source = (
            f"{est.gpus} x {est.gpu_name} at {est.mfu:.0%} MFU ({_si(est.peak_flops_per_gpu or 0, 'FLOP/s')} "
            "dense 16-bit peak each)"
            if est.mfu is not None
            else "measured throughput"
        )
        lines.append(
            f"wall time           {_duration(est.wall_seconds)} at {_si(est.tokens_per_s or 0)} tokens/s, "
            f"{source}; {_duration(est.wall_seconds_padded or math.nan)} with padded rows at the same "
            "utilisation"
        )
    return "\n".join(lines)


def format_trial(est: Estimate, trial: TrialResult, model_config: Any, mask_rate: float) -> str:
    """What a trial measured, and the run's wall time from the trial's FLOP/s on the configured device count."""
    tokens = trial.row_tokens
    flops_per_s = (trial.timed_steps * trial.micro_batch_size
                   * train_flops_per_sequence(model_config, tokens, tokens**2, mask_rate) / trial.seconds)
    try:
        utilisation = f" ({flops_per_s / peak_flops_for(trial.device_name):.0%} MFU)"
    except DnabertError:  # a CPU or a GPU missing from the peak table: report FLOP/s only
        utilisation = ""
    lines = [
        f"trial               {trial.timed_steps} optimiser steps of {trial.micro_batch_size} x {tokens}-token "
        f"rows on {trial.device_name}: {trial.tokens_per_s:,.0f} tokens/s, "
        f"{_si(flops_per_s, 'FLOP/s')}{utilisation}",
    ]
    if trial.peak_allocated_bytes is None:
        lines.append("memory (trial)      not measured on a CPU: see the estimate above")
    else:
        lines.append(
            f"memory (trial)      {_memory(trial.peak_allocated_bytes)} peak allocated, "
            f"{_memory(trial.peak_reserved_bytes or 0)} reserved by the allocator, for micro-batch "
            f"{trial.micro_batch_size} (estimate above: {_memory(est.memory_per_gpu_bytes)})"
        )
    wall = est.train_flops / (est.gpus * flops_per_s)
    lines.append(
        f"wall time (trial)   {_duration(wall)} on {est.gpus} device(s) like it at the trial's FLOP/s "
        "(linear scaling over data parallelism assumed)"
    )
    return "\n".join(lines)


def estimate_from_config(cfg: Any, devices: int, num_nodes: int, trial: TrialResult | None = None) -> str:
    """The formatted estimate of a composed training config (`python train.py ... estimate=true`).

    Reads ``model.family`` (dnabert.models.get_family), ``tokenizer.k`` (k-mer families), ``model``,
    ``global_batch_size``, ``max_steps``, ``data.micro_batch_size``, ``data.max_tokens`` and ``data.length_rule``;
    the GPU is the visible CUDA device unless ``estimate_gpu`` names one, the MFU ``estimate_mfu`` (default 0.4).
    A ``trial`` adds its measured memory and wall time.
    """
    model_values = OmegaConf.to_container(cfg.model, resolve=True)
    family = get_family(model_values.get("family", DEFAULT_FAMILY))
    config_class = family.config_class()
    if family.tokenizer == "bpe":
        k = None
    else:
        k = OmegaConf.select(cfg, "tokenizer.k", default=None) or OmegaConf.select(cfg, "data.k")
        model_values.setdefault("vocab_size", vocab_size(k))
    model_config = config_class.from_dict(
        {field: value for field, value in model_values.items() if field in config_class.__dataclass_fields__}
    )
    gpu_name = OmegaConf.select(cfg, "estimate_gpu", default=None)
    if gpu_name is None:
        gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    mask_rate = cfg.masking.rate
    est = estimate(
        model_config, k,
        max_tokens=OmegaConf.select(cfg, "data.max_tokens", default=512),
        global_batch_size=cfg.global_batch_size,
        max_steps=cfg.max_steps,
        micro_batch_size=cfg.data.micro_batch_size,
        devices=devices,
        num_nodes=num_nodes,
        gpu_name=gpu_name,
        mfu=OmegaConf.select(cfg, "estimate_mfu", default=0.4),
        length_rule=OmegaConf.select(cfg, "data.length_rule", default="original"),
        mask_rate=mask_rate,
    )
    text = format_estimate(est)
    return text if trial is None else f"{text}\n{format_trial(est, trial, model_config, mask_rate)}"

