"""FlexAttention's compiled kernel on the CPU, for the tests that compare it with SDPA (test_levers.py,
test_dnabert2_model.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch
from torch.nn.attention.flex_attention import flex_attention


@contextlib.contextmanager
def compiled_flex_attention(family_model: ModuleType) -> Iterator[None]:
    """Within it, the family's attention (`family_model`, e.g. dnabert.models.dnabert.model) calls FlexAttention
    compiled by inductor, as `flex_attention_for` does on a GPU, instead of the eager reference it uses on a CPU.

    The kernel alone and with static shapes, because with torch 2.13 inductor's CPU FlexAttention template fails
    to build with dynamic shapes (a C++ compile error) and inside a whole-model compile (the block mask's tensors
    are computed in the same graph: NoValidChoicesError). On a GPU both are Triton's, which the CUDA-only tests
    compile."""
    compiled = torch.compile(flex_attention, backend="inductor", dynamic=False)
    original = family_model.flex_attention_for
    family_model.flex_attention_for = lambda device: compiled
    try:
        yield
    finally:
        family_model.flex_attention_for = original
