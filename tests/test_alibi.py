"""DNABERT-2's ALiBi without a per-row (B, heads, T, T) bias: every form equals the dense bias it replaced.

The reference is the formulation the model used before (and MultiMolecule uses): one float32 (B, heads, T, T)
tensor ``where(key attendable, -slope * |i - j|, -inf)`` cast to the attention's dtype, fed to the model's own
layers (``benchmarks.alibi_memory.DenseAlibiDnaBert2`` restates it as the memory benchmark's baseline). The SDPA
path for one-window rows (shared (1, heads, T, T) ALiBi, key padding as an extra channel) must give the same
outputs and gradients in float32 and bf16 autocast, never allocate a B * heads * T * T tensor, and give padding
keys exactly zero weight. FlexAttention (ALiBi as score_mod, tile-summary block mask) must give SDPA's outputs;
its forward runs on CPU, its backward only on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.alibi_memory import DenseAlibiDnaBert2
from dnabert.data.packing import place, plan_rows
from dnabert.models.components import FLEX_BLOCK, IGNORE_INDEX, flex_block_mask, packed_layout
from dnabert.models.dnabert2.model import DnaBert2ForMaskedLM
from tests.model_checks import assert_same_loss_and_grads, loss_and_grads
from tests.test_dnabert2_model import MASK, PAD, VOCAB, masked_batch, tiny_model

# Rows of every kind: full, padded, one real token pair, fully padded (length 0 leaves the row all [PAD]).
LENGTHS = [40, 23, 2, 0, 31]
flex_on_cpu = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``masked_batch`` with a fully padded row allowed (its builder needs >= 2 tokens per row)."""
    input_ids, labels = masked_batch([max(length, 2) for length in lengths], seed)
    for row, length in enumerate(lengths):
        if length == 0:
            input_ids[row], labels[row] = PAD, IGNORE_INDEX
    return input_ids, labels


def dense_twin(model: DnaBert2ForMaskedLM) -> DenseAlibiDnaBert2:
    """The same weights driven through the former dense bias (the model's layers take one for packed rows)."""
    twin = DenseAlibiDnaBert2(model.config).to(model.bert.embeddings.word_embeddings.weight.dtype)
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_sdpa_one_window_rows_equal_the_dense_bias(autocast):
    """Loss and every gradient; in bf16 both paths round the same ALiBi values, so only summation order differs."""
    model = tiny_model()
    input_ids, labels = padded_batch(LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = loss_and_grads(dense_twin(model), input_ids, labels)
        got = loss_and_grads(model, input_ids, labels)
    assert_same_loss_and_grads(expected, got, atol=2e-3 if autocast else 1e-5)
    assert expected[0] > 1  # a real loss, not an empty mask
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):  # weights in the dtype, no autocast (inference)
            typed = tiny_model().to(dtype)
            real = input_ids != PAD
            torch.testing.assert_close(typed(input_ids)[real], dense_twin(typed)(input_ids)[real],
                                       atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_padding_keys_get_exactly_zero_weight(autocast):
    """Whatever sits at the padding positions, the real tokens' outputs are bit for bit the same: the padding
    keys' scores underflow to a weight of exactly 0 (a tiny weight would let the random tokens through)."""
    model = tiny_model().eval()
    input_ids, _ = padded_batch(LENGTHS)
    real = input_ids != PAD
    other = torch.where(real, input_ids, torch.randint(MASK + 1, VOCAB, input_ids.shape))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids, attention_mask=real)
        with_other_padding = model(other, attention_mask=real)
    assert torch.equal(logits[real], with_other_padding[real])
    assert not torch.equal(logits[~real], with_other_padding[~real])  # the padding positions did change


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_one_window_rows_allocate_no_per_row_bias():
    """B=6, heads=4, T=64: B*heads*T*T = 98,304 elements; the shared ALiBi bias has heads*T*T = 16,384, and the
    largest activation of a training step (the fused Wqkv output, 6*64*96 = 36,864) stays below the per-row bias."""
    model = tiny_model()
    input_ids, labels = padded_batch([64, 50, 33, 8, 2, 0])
    batch, length = input_ids.shape
    per_row_bias = batch * model.config.num_attention_heads * length * length
    sizes = {}
    for name, module in (("dense", dense_twin(model)), ("shared", model)):
        with LargestTensor() as recorder:
            loss_and_grads(module, input_ids, labels)
        sizes[name] = recorder.largest
    assert sizes["dense"] >= per_row_bias  # the recorder sees the former bias
    assert sizes["shared"] < per_row_bias


@flex_on_cpu
@pytest.mark.parametrize("packed", [False, True], ids=["one-window", "packed"])
def test_flex_equals_sdpa_across_tiles(packed):
    """Forward, rows longer than one 128-token tile (a partial tail tile, tiles of padding only, a fully padded
    row; packed windows crossing tile edges): FlexAttention's ALiBi score_mod and block mask give SDPA's logits."""
    sdpa = tiny_model().eval()
    flex = DnaBert2ForMaskedLM(sdpa.config, attention="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    if packed:
        windows, _ = masked_batch([90, 70, 120, 30, 100, 60, 10, 110])
        plan = plan_rows((windows != PAD).sum(dim=1).numpy(), row_tokens=300)
        input_ids = place(windows, plan, PAD)
    else:
        input_ids, _ = padded_batch([300, 140, 129, 9, 0])
    assert input_ids.shape[1] > 2 * FLEX_BLOCK
    real = input_ids != PAD
    with torch.no_grad():
        expected = sdpa(input_ids, packed=packed)[real]
        torch.testing.assert_close(flex(input_ids, packed=packed)[real], expected, atol=1e-5, rtol=1e-5)


def tile_table(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """BlockMask's (counts, ordered indices) back to a boolean (B, H, q tiles, k tiles) table."""
    tiles = indices.shape[-1]
    listed = torch.arange(tiles) < counts[..., None]
    table = torch.zeros(*indices.shape[:-1], tiles + 1, dtype=torch.bool)
    return table.scatter_(-1, torch.where(listed, indices.long(), tiles), True)[..., :tiles]


@flex_on_cpu
@pytest.mark.parametrize("packed", [False, True], ids=["one-window", "packed"])
def test_tile_summary_block_mask_matches_create_block_mask(packed):
    """Against torch's create_block_mask on the same mask (a dense (B, T, T) evaluation): every tile it computes
    is computed, the same tiles are full (mask skipped), and attention through both masks is the same."""
    generator = torch.Generator().manual_seed(3)
    batch, length = 4, 419
    key_mask = torch.arange(length) < torch.tensor([[length], [300], [5], [0]])
    if packed:
        tokens = torch.randint(5, 50, (batch, length), generator=generator)
        tokens[torch.rand(batch, length, generator=generator) < 0.008] = 2
        tokens[:, 0] = 2
        window_ids, _ = packed_layout(tokens, cls_token_id=2)

        def mask_mod(b, h, q, k):
            return (key_mask[b, k] & (window_ids[b, q] == window_ids[b, k])) | (q == k)
    else:
        window_ids = None
        attendable = key_mask | ~key_mask.any(dim=1, keepdim=True)

        def mask_mod(b, h, q, k):
            return attendable[b, k]

    ours = flex_block_mask(key_mask, window_ids)
    reference = create_block_mask(mask_mod, batch, None, length, length, device="cpu")
    ours_full = tile_table(ours.full_kv_num_blocks, ours.full_kv_indices)
    assert torch.equal(ours_full, tile_table(reference.full_kv_num_blocks, reference.full_kv_indices))
    assert ours_full.any()
    reference_computed = reference.to_dense().bool()
    assert (ours.to_dense().bool() | ~reference_computed).all()
    query, key, value = (torch.randn(batch, 2, length, 16, generator=generator) for _ in range(3))
    torch.testing.assert_close(flex_attention(query, key, value, block_mask=ours),
                               flex_attention(query, key, value, block_mask=reference))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_flex_one_window_rows_match_float32_sdpa():
    """On the GPU: padded one-window rows of 300 tokens through compiled FlexAttention under bf16 autocast, forward
    and backward, against the float32 SDPA path (bf16 tolerances)."""
    reference = tiny_model().cuda()
    fast = DnaBert2ForMaskedLM(reference.config, attention="flex").cuda()
    fast.load_state_dict(reference.state_dict())
    input_ids, labels = (tensor.cuda() for tensor in padded_batch([300, 140, 129, 9, 0]))
    expected = loss_and_grads(reference, input_ids, labels)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(fast, input_ids, labels)
    assert loss.item() == pytest.approx(expected[0].item(), rel=2e-2)
    for name, grad in expected[1].items():
        assert torch.isfinite(grads[name]).all()
        assert torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0) > 0.99, name

