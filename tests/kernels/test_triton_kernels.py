"""Triton kernels against their golden functions (CPU interpreter here, the GPU where one is present).

Indices must match exactly, values within 1e-4 (fp32) / 2e-2 (fp16). The golden functions must
not be reached: each test checks that its entry point launched the kernels (a silent fallback would pass
any comparison).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from kernel_helpers import expert_weights, random_routing

from sbmoe.kernels import (
    PackedWeight,
    align,
    fused_moe_gemm,
    fused_moe_gemm_ref,
    gemm,
    grouped_ffn,
    grouped_ffn_ref,
    grouped_gemm,
    grouped_gemm_ref,
    moe_align_block_size,
    moe_align_block_size_ref,
    moe_dispatch,
    moe_dispatch_ref,
    pack_int4,
    runtime,
)

pytest.importorskip("triton")  # sbmoe.kernels imports without it; these tests launch its kernels

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2}
TOKENS = [1, 37]  # a single token (decode) and a ragged batch
EXPERTS = [4, 8, 64]


@pytest.fixture(autouse=True)
def launches(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Skip where no kernel can run; otherwise count kernel launches, so a test can tell that its entry
    point ran the kernel and did not silently take the golden path."""
    if not runtime.triton_available() or not runtime.kernels_match_mode(runtime.interpret_mode()):
        pytest.skip("Triton cannot run kernels here (no GPU, TRITON_INTERPRET unset, or kernels built for the "
                    "other mode earlier in this process)")
    counts: Counter = Counter()
    for module, name in ((align, "align"), (gemm, "gemm")):
        def counted(*args, _launch=module._launch, _name=name, **kwargs):
            counts[_name] += 1
            return _launch(*args, **kwargs)

        monkeypatch.setattr(module, "_launch", counted)
    return counts


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("tokens", [1, 5, 37])
def test_alignment_exact(tokens: int, experts: int, top_k: int, device: torch.device,
        launches: Counter) -> None:
    indices, _ = random_routing(tokens, top_k, experts, used=experts - 2, seed=tokens)  # >= 2 empty experts
    block_m = 4 if tokens == 37 else 16
    got = moe_align_block_size(indices.to(device), experts, block_m)
    golden = moe_align_block_size_ref(indices, experts, block_m)
    for name in ("sorted_ids", "expert_ids", "num_padded"):
        assert torch.equal(getattr(got, name).cpu(), getattr(golden, name)), name
    assert (got.block_m, got.num_slots) == (block_m, tokens * top_k)
    assert launches == {"align": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_dispatch(tokens: int, experts: int, top_k: int, dtype: torch.dtype, device: torch.device,
        launches: Counter) -> None:
    indices, weights = random_routing(tokens, top_k, experts, used=experts - 2, seed=experts + top_k)
    x = torch.randn(tokens, 24, generator=torch.Generator().manual_seed(tokens)).to(dtype)
    w_in, w_out = expert_weights(experts, 24, 16, "swiglu", dtype)
    got = moe_dispatch(*(t.to(device) for t in (x, indices, weights.to(dtype), w_in, w_out)), "swiglu")
    assert_close(got, moe_dispatch_ref(x, indices, weights.to(dtype), w_in, w_out, "swiglu"))
    assert launches == {"align": 1, "gemm": 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_moe_dispatch_gelu_with_float32_router(dtype: torch.dtype, device: torch.device,
        launches: Counter) -> None:
    """A float32 router over half-precision experts: the routing weight is read in its own dtype."""
    indices, weights = random_routing(6, 2, 8, used=5, seed=1)
    x = torch.randn(6, 16).to(dtype)
    w_in, w_out = expert_weights(8, 16, 32, "gelu", dtype)
    got = moe_dispatch(*(t.to(device) for t in (x, indices, weights, w_in, w_out)), "gelu")
    assert_close(got, moe_dispatch_ref(x, indices, weights, w_in, w_out, "gelu"))
    assert launches == {"align": 1, "gemm": 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize(("rows", "experts"), [(1, 4), (37, 8), (20, 64)])
def test_grouped_ffn(rows: int, experts: int, kind: str, dtype: torch.dtype, device: torch.device,
        launches: Counter) -> None:
    generator = torch.Generator().manual_seed(rows)
    counts = torch.bincount(torch.randint(0, max(experts // 2, 1), (rows,), generator=generator), minlength=experts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # the upper half stays empty
    x_sorted = torch.randn(rows, 16, generator=generator).to(dtype)
    w_in, w_out = expert_weights(experts, 16, 32, kind, dtype)
    got = grouped_ffn(*(t.to(device) for t in (x_sorted, offsets, w_in, w_out)), kind)
    assert_close(got, grouped_ffn_ref(x_sorted, offsets, w_in, w_out, kind))
    assert launches == {"align": 1, "gemm": 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_gemm_slot_rows_weights_and_strided_weights(dtype: torch.dtype, device: torch.device,
        launches: Counter) -> None:
    """Top-2: each (token, choice) slot is an output row; routing weights multiply it; a transposed weight
    view (strides, no copy) is read correctly."""
    indices, weights = random_routing(6, 2, 8, used=6, seed=4)
    x = torch.randn(6, 16).to(dtype)
    w = (torch.randn(8, 40, 16) / 4).to(dtype).transpose(1, 2)  # (E, K=16, N=40), non-contiguous
    aligned = moe_align_block_size_ref(indices, 8, 16)
    moved = moe_align_block_size(indices.to(device), 8, 16)
    got = fused_moe_gemm(x.to(device), w.to(device), moved, top_k=2, weights=weights.to(device))
    assert_close(got, fused_moe_gemm_ref(x, w, aligned, top_k=2, weights=weights.to(dtype)))
    assert got.shape == (12, 40)
    assert launches == {"align": 1, "gemm": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group_size", [8, 32])
@pytest.mark.parametrize("bits", [4, 8])
def test_dequant_grouped_gemm(bits: int, group_size: int, dtype: torch.dtype, device: torch.device,
        launches: Counter) -> None:
    """Packed weights decoded in the kernel match the golden dequantize; groups both narrower than and as
    wide as the kernel's K tile; an empty expert; an output width that is not a power of two."""
    generator = torch.Generator().manual_seed(bits + group_size)
    experts, k_in, n_out = 4, 64, 24
    q = torch.randint(0, 2 ** bits, (experts, k_in, n_out), generator=generator)
    scale = (torch.rand(experts, k_in // group_size, n_out, generator=generator) + 0.5) / 2 ** bits
    zero = torch.rand(experts, k_in // group_size, n_out, generator=generator) * (2 ** bits - 1)
    qweight = pack_int4(q) if bits == 4 else q.to(torch.uint8)
    packed = PackedWeight(qweight, scale, zero, bits, group_size)
    offsets = torch.tensor([0, 3, 3, 10, 17])
    x_sorted = torch.randn(17, k_in, generator=generator).to(dtype)
    on_device = PackedWeight(*(t.to(device) for t in (qweight, scale, zero)), bits, group_size)
    got = grouped_gemm(x_sorted.to(device), offsets.to(device), on_device)
    assert_close(got, grouped_gemm_ref(x_sorted, offsets, packed))
    assert launches == {"align": 1, "gemm": 1}


def test_dequant_swiglu_reads_both_halves(device: torch.device,
        launches: Counter) -> None:
    """SwiGLU over packed weights: the up half's columns (and their scales) are offset by h."""
    indices, _ = random_routing(9, 1, 4, seed=7)
    q = torch.randint(0, 16, (4, 32, 64))
    scale, zero = torch.rand(4, 2, 64) / 8 + 0.01, torch.rand(4, 2, 64) * 15
    packed = PackedWeight(pack_int4(q), scale, zero, 4, 16)
    x = torch.randn(9, 32)
    aligned = moe_align_block_size_ref(indices, 4, 16)
    on_device = PackedWeight(*(t.to(device) for t in (packed.qweight, scale, zero)), 4, 16)
    got = fused_moe_gemm(x.to(device), on_device, moe_align_block_size(indices.to(device), 4, 16),
                         activation="swiglu")
    assert_close(got, fused_moe_gemm_ref(x, packed, aligned, activation="swiglu"))
    assert launches == {"align": 1, "gemm": 1}


def test_empty_batch(device: torch.device, launches: Counter) -> None:
    """No tokens at all: shapes as the torch path gives them, nothing read out of bounds."""
    w_in, w_out = expert_weights(4, 16, 16, "swiglu", torch.float32)
    x, indices, weights = torch.zeros(0, 16), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2)
    got = moe_dispatch(*(t.to(device) for t in (x, indices, weights, w_in, w_out)))
    assert got.shape == (0, 16)
    offsets = torch.zeros(5, dtype=torch.long)
    assert grouped_ffn(*(t.to(device) for t in (x, offsets, w_in, w_out))).shape == (0, 16)
    assert launches == {"align": 2, "gemm": 4}


def test_fused_gemm_grouped_launch_order_covers_every_tile(device: torch.device, launches: Counter) -> None:
    """Slot tiles sweep the columns in groups of GROUP_M (8): with more slot tiles than one group, a last,
    partial group that holds real slots, and several column tiles (a partial last one), every output tile is
    still written once."""
    indices, _ = random_routing(200, 2, 4, seed=9)
    x = torch.randn(200, 16)
    w = torch.randn(4, 16, 144) / 4
    aligned = moe_align_block_size_ref(indices, 4, 16)
    tiles = aligned.expert_ids.numel()
    assert tiles > 8 and tiles % 8 and (tiles // 8) * 8 * 16 < int(aligned.num_padded)
    got = fused_moe_gemm(x.to(device), w.to(device), moe_align_block_size(indices.to(device), 4, 16), top_k=2)
    assert_close(got, fused_moe_gemm_ref(x, w, aligned, top_k=2))
    assert launches == {"align": 1, "gemm": 1}
