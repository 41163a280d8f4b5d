"""Checks every model family's tests share (test_levers.py for DNABERT, test_dnabert2_model.py and test_alibi.py for
DNABERT-2): loss and gradients of a masked batch, inductor against eager, FlexAttention's compiled kernel on the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch
from torch._dynamo.utils import counters
from torch.nn.attention.flex_attention import flex_attention

from dnabert.models.components import IGNORE_INDEX, masked_lm_loss

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels)


def loss_and_grads(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, **options):
    model.zero_grad()
    masked = labels != IGNORE_INDEX
    loss = masked_lm_loss(model(input_ids, masked_positions=masked, **options), labels[masked])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(first, second, atol: float = 1e-5) -> None:
    torch.testing.assert_close(second[0], first[0], atol=atol, rtol=1e-5)
    assert first[1].keys() == second[1].keys()
    for name, grad in first[1].items():
        torch.testing.assert_close(second[1][name], grad, atol=atol, rtol=1e-4, msg=name)


def check_inductor_equals_eager(eager: torch.nn.Module, compiled: torch.nn.Module, flex: torch.nn.Module,
                                family_model: ModuleType, unpacked: list[Batch], packed: Batch) -> None:
    """inductor, the code generator of `model.compile=true` on a GPU, here generating CPU code with dynamic shapes:
    rows of two widths and packed rows, forward and backward, equal eager, with one compile per layout and no
    recompile per width. Then FlexAttention's kernel compiled (`flex`, eager's weights), forward only (torch has no
    CPU backward for it), equals SDPA on the packed rows. `compiled` starts with eager's weights."""
    torch._dynamo.reset()
    counters.clear()
    compiled.compile(backend="inductor", dynamic=True)
    for (input_ids, labels), is_packed in [*((batch, False) for batch in unpacked), (packed, True)]:
        assert_same_loss_and_grads(loss_and_grads(eager, input_ids, labels, packed=is_packed),
                                   loss_and_grads(compiled, input_ids, labels, packed=is_packed), atol=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in-place compile: no _orig_mod. keys
    # The encoder of each layout, and the head after dynamo's graph break at the boolean index of the masked
    # positions (a shape that depends on the data).
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    flex.load_state_dict(eager.state_dict())
    packed_ids, packed_labels = packed
    masked = packed_labels != IGNORE_INDEX
    with torch.no_grad(), compiled_flex_attention(family_model):
        torch.testing.assert_close(flex.eval()(packed_ids, masked_positions=masked, packed=True),
                                   eager.eval()(packed_ids, masked_positions=masked, packed=True), atol=1e-5, rtol=1e-5)


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
