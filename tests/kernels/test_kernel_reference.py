"""Golden functions against hand-worked examples, the packed-weight spec and the torch dispatch path.

These need no Triton: they pin what the kernels are compared against.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import expert_weights, random_routing

from sbmoe.kernels import (
    PackedWeight,
    dequantize,
    fused_moe_gemm_ref,
    grouped_ffn_ref,
    grouped_gemm_ref,
    moe_align_block_size_ref,
    moe_dispatch_ref,
    pack_int4,
    unpack_int4,
)
from sbmoe.kernels.gemm import TileConfig, fit_shared_memory, shared_memory_bytes
from sbmoe.moe import dispatch


def test_alignment_hand_example() -> None:
    # slots 0..5 = (token, choice) row-major; experts 1 and 4 are empty
    aligned = moe_align_block_size_ref(torch.tensor([[2, 0], [0, 3], [2, 0]]), num_experts=5, block_m=2)
    sentinel = 6
    assert aligned.sorted_ids.tolist() == [1, 2, 5, sentinel, 0, 4, 3, sentinel] + [sentinel] * 4
    assert aligned.expert_ids.tolist() == [0, 0, 2, 3, -1, -1]
    assert aligned.num_padded.tolist() == [8]
    assert (aligned.block_m, aligned.num_slots) == (2, 6)
    assert aligned.sorted_ids.dtype == aligned.expert_ids.dtype == torch.int32


def test_alignment_single_token_and_exact_blocks() -> None:
    one = moe_align_block_size_ref(torch.tensor([[3]]), num_experts=4, block_m=4)
    assert one.sorted_ids.tolist() == [0, 1, 1, 1] + [1] * 12  # capacity = ceil((1 + 4 * 3) / 4) * 4 = 16
    assert one.expert_ids.tolist() == [3, -1, -1, -1]
    full = moe_align_block_size_ref(torch.tensor([[1], [1]]), num_experts=2, block_m=2)
    assert full.sorted_ids.tolist()[:2] == [0, 1] and full.num_padded.tolist() == [2]  # no padding needed


def test_unpack_int4_nibble_order() -> None:
    packed = torch.tensor([[0x21, 0xF0], [0x7A, 0x0C]], dtype=torch.uint8)
    assert unpack_int4(packed).tolist() == [[1, 0], [2, 15], [10, 12], [7, 0]]
    q = torch.randint(0, 16, (3, 8, 5))
    assert torch.equal(unpack_int4(pack_int4(q)), q.to(torch.uint8))
    assert pack_int4(torch.tensor([[1], [2]])).tolist() == [[0x21]]


def test_dequantize_follows_the_spec() -> None:
    q = torch.tensor([[10], [20], [30], [40]], dtype=torch.uint8)
    scale, zero = torch.tensor([[0.5], [2.0]]), torch.tensor([[10.5], [30.0]])  # fractional zero point allowed
    assert dequantize(q, scale, zero, bits=8, group_size=2).flatten().tolist() == [-0.25, 4.75, 0.0, 20.0]
    q4 = torch.tensor([[1], [14], [3], [8]])
    expected = dequantize(q4.to(torch.uint8), scale, zero * 0 + 2, bits=8, group_size=2)
    assert torch.equal(dequantize(pack_int4(q4), scale, zero * 0 + 2, bits=4, group_size=2), expected)
    assert expected.flatten().tolist() == [-0.5, 6.0, 2.0, 12.0]


def test_packed_weight_rejects_off_spec_tensors() -> None:
    q, scale = torch.zeros(2, 8, 3, dtype=torch.uint8), torch.ones(2, 4, 3)
    assert PackedWeight(q, scale, scale, bits=8, group_size=2).in_features == 8
    assert PackedWeight(q, torch.ones(2, 8, 3), torch.ones(2, 8, 3), bits=4, group_size=2).in_features == 16
    with pytest.raises(ValueError, match="bits"):
        PackedWeight(q, scale, scale, bits=3, group_size=2)
    with pytest.raises(ValueError, match="scale"):
        PackedWeight(q, torch.ones(2, 2, 3), scale, bits=8, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        PackedWeight(q, scale, scale, bits=8, group_size=3)
    with pytest.raises(ValueError, match="uint8"):
        PackedWeight(q.to(torch.int32), scale, scale, bits=8, group_size=2)


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_golden_ffn_equals_torch_dispatch(kind: str, top_k: int) -> None:
    indices, weights = random_routing(9, top_k, experts=6, used=4, seed=top_k)
    x = torch.randn(9, 8, dtype=torch.float64)
    w_in, w_out = expert_weights(6, 8, 5, kind, torch.float64)
    torch.testing.assert_close(moe_dispatch_ref(x, indices, weights.double(), w_in, w_out, kind),
                               dispatch.moe_dispatch(x, indices, weights.double(), w_in, w_out, kind), rtol=0, atol=0)
    aligned = dispatch.align_by_expert(indices, 6)
    x_sorted = x[aligned.tokens]
    torch.testing.assert_close(grouped_ffn_ref(x_sorted, aligned.offsets, w_in, w_out, kind),
                               dispatch.grouped_ffn(x_sorted, aligned.offsets, w_in, w_out, kind), rtol=0, atol=0)


@pytest.mark.parametrize("top_k", [1, 2])
def test_golden_fused_gemms_compose_to_dispatch(top_k: int) -> None:
    """Slot rows: layer 1 reads token s // k, layer 2 weights slot s; summing a token's k slots is dispatch."""
    indices, weights = random_routing(7, top_k, experts=5, used=3, seed=3)
    x = torch.randn(7, 6, dtype=torch.float64)
    w_in, w_out = expert_weights(5, 6, 4, "swiglu", torch.float64)
    aligned = moe_align_block_size_ref(indices, 5, block_m=4)
    hidden = fused_moe_gemm_ref(x, w_in, aligned, top_k=top_k, activation="swiglu")
    slots = fused_moe_gemm_ref(hidden, w_out, aligned, weights=weights.double())
    for slot in range(7 * top_k):  # one row per (token, choice)
        token, choice = divmod(slot, top_k)
        expert = int(indices[token, choice])
        row = torch.nn.functional.silu(x[token] @ w_in[expert][:, :4]) * (x[token] @ w_in[expert][:, 4:])
        torch.testing.assert_close(slots[slot], weights[token, choice].double() * (row @ w_out[expert]))
    torch.testing.assert_close(slots.view(7, top_k, 6).sum(1), moe_dispatch_ref(x, indices, weights.double(),
                                                                                  w_in, w_out))


def test_golden_grouped_gemm_decodes_packed_weights() -> None:
    q = torch.randint(0, 16, (3, 8, 4))
    scale, zero = torch.rand(3, 2, 4) + 0.1, torch.rand(3, 2, 4) * 15
    packed = PackedWeight(pack_int4(q), scale, zero, bits=4, group_size=4)
    dense = (q.float() - zero.repeat_interleave(4, 1)) * scale.repeat_interleave(4, 1)
    offsets = torch.tensor([0, 2, 2, 5])
    x = torch.randn(5, 8)
    expected = torch.cat([x[:2] @ dense[0], x[2:] @ dense[2]])
    torch.testing.assert_close(grouped_gemm_ref(x, offsets, packed), expected)


H200_SHARED_MEMORY = 232448  # shared_memory_per_block_optin of the H200 the kernels were run on


def test_shared_memory_estimate_bounds_what_triton_asked_for() -> None:
    """Two launches that failed to compile on an H200 (Triton's OutOfResources named the bytes each needed):
    the estimate is at least that much, so ``fit_shared_memory`` would have shrunk both."""
    fp32_swiglu = TileConfig(128, 64, 8, 3)  # block_m 64, float32 x and weights, gate and up tiles
    assert shared_memory_bytes(fp32_swiglu, 64, 4, 4, 2) >= 249856
    int4_swiglu = TileConfig(64, 64, 4, 4)  # block_m 16, float32 x, packed uint8 + float32 scale and zero
    assert shared_memory_bytes(int4_swiglu, 16, 4, 1 + 4 + 4, 2) >= 249856


def test_fit_shared_memory_shrinks_stages_then_k_and_keeps_what_fits() -> None:
    bf16 = TileConfig(128, 64, 8, 3)  # compiled and ran at block_m 128 on the H200 (swiglu, bf16)
    assert fit_shared_memory(bf16, 128, 2, 2, 2, H200_SHARED_MEMORY) == bf16
    fitted = fit_shared_memory(TileConfig(128, 64, 8, 3), 64, 4, 4, 2, H200_SHARED_MEMORY)
    assert fitted == TileConfig(128, 64, 8, 2)
    assert shared_memory_bytes(fitted, 64, 4, 4, 2) <= H200_SHARED_MEMORY
    tiny = fit_shared_memory(TileConfig(128, 64, 8, 3), 64, 4, 9, 2, 64 * 1024)  # stages, then block_k halves
    assert (tiny.num_stages, tiny.block_k) == (1, 16) and shared_memory_bytes(tiny, 64, 4, 9, 2) <= 64 * 1024
