"""A short training trial: a few real optimiser steps of the configured model, to measure what arithmetic
can only estimate (peak GPU memory of one micro-batch, achieved FLOP/s).

Why a trial and not only the formula: allocator fragmentation, kernel workspaces, compile and the attention
kernel actually chosen move peak memory and speed by tens of percent, and an out-of-memory error at hour two
of a queued job is the expensive way to learn that. The trial runs the real module (masking, levers, loss,
fused AdamW, autocast) on rows of full length, the worst case for memory: a packed row or a full-length window
is what every micro-batch of the paper's run is bounded by.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from dnabert.data.masking import mask_batch
from dnabert.data.tokenizers.kmer import kmer_ids_from_codes
from dnabert.data.tokenizers.special import CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID
from dnabert.tasks.pretrain import MaskedLMModule, build_adamw

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class TrialResult:
    """What a trial measured on one device; memory only on CUDA (the CPU has no allocator statistics)."""

    device_name: str
    micro_batch_size: int
    row_tokens: int
    timed_steps: int
    seconds: float
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None

    @property
    def tokens_per_s(self) -> float:
        return self.timed_steps * self.micro_batch_size * self.row_tokens / self.seconds


def full_length_rows(k: int, micro_batch_size: int, row_tokens: int, seed: int = 0,
                     bpe_vocab_size: int | None = None) -> torch.Tensor:
    """`[CLS] k-mers [SEP]` rows of exactly `row_tokens` ids, cut from random DNA (consistent overlapping k-mers);
    with `bpe_vocab_size`, random non-special BPE ids instead (a step's cost does not depend on which)."""
    rng = np.random.default_rng(seed)
    if bpe_vocab_size is None:
        codes = rng.integers(0, 4, size=(micro_batch_size, row_tokens - 2 + k - 1), dtype=np.uint8)
        ids = kmer_ids_from_codes(codes, k)
    else:
        ids = rng.integers(NUM_SPECIAL_TOKENS, bpe_vocab_size, size=(micro_batch_size, row_tokens - 2))
    cls, sep = (np.full((micro_batch_size, 1), token, dtype=np.int64) for token in (CLS_ID, SEP_ID))
    return torch.from_numpy(np.concatenate([cls, ids, sep], axis=1))


def run_trial(
    module: MaskedLMModule,
    micro_batch_size: int,
    row_tokens: int,
    device: torch.device,
    precision: str,
    warmup_steps: int = 2,
    timed_steps: int = 4,
) -> TrialResult:
    """Train `module` for `warmup_steps + timed_steps` optimiser steps of one full-length micro-batch each.

    The warm-up (untimed) allocates the optimiser state and compiles; the peak is read over all steps.
    The module's weights are changed: build a fresh one for real training.
    """
    model = module.to(device).train()
    optimizer = build_adamw(module.model, module.optim_config, precision)
    bpe_vocab_size = module.hparams.get("tokenizer_vocab_size")
    input_ids = full_length_rows(module.k, micro_batch_size, row_tokens, bpe_vocab_size=bpe_vocab_size).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = AUTOCAST_DTYPES.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = 0.0
    for step in range(warmup_steps + timed_steps):
        if step == warmup_steps:
            if on_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        masked_ids, labels = mask_batch(input_ids, module.k, module.schedule.rate, generator, mode=module.mask_mode,
                                        vocab_size=module.model.config.vocab_size)
        with autocast:
            loss = model.masked_lm_outputs({"input_ids": masked_ids, "labels": labels})["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return TrialResult(
        device_name=torch.cuda.get_device_name(device) if on_cuda else "CPU",
        micro_batch_size=micro_batch_size,
        row_tokens=row_tokens,
        timed_steps=timed_steps,
        seconds=seconds,
        peak_allocated_bytes=torch.cuda.max_memory_allocated(device) if on_cuda else None,
        peak_reserved_bytes=torch.cuda.max_memory_reserved(device) if on_cuda else None,
    )
