"""Triton kernel of ``gemm.fused_moe_gemm``; imported only once Triton is known to run.

One program per (tile of ``BLOCK_M`` aligned slots, tile of ``BLOCK_N`` output columns). The tile's slot
ids select the A rows (``slot // A_ROW_DIV``: the token for a first layer fed by tokens, the slot itself for
a layer fed by slot rows) and the output rows (the slot), so neither the gather of inputs nor the scatter
of outputs is a separate pass. Weights are either float or packed int8/int4 with grouped scales, decoded
tile by tile in registers; accumulation is float32; the activation (GELU, or SwiGLU from a second
accumulator over the up half of the columns) and the routing weight are applied before the single store.
Like ``_triton_align``, only builtins and local jit helpers are called, so the kernel also interprets when
triton itself was imported before TRITON_INTERPRET was set.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .runtime import interpret_mode

INTERPRETED = interpret_mode()  # the mode triton.jit fixes for the kernels below

ACT_NONE, ACT_GELU, ACT_SWIGLU = 0, 1, 2


@triton.jit
def _weight_tile(b_ptr, scale_ptr, zero_ptr, offs_k, offs_n, mask, stride_bk, stride_bn, stride_sg, stride_sn,
                 group_size, BITS: tl.constexpr):
    """A (BLOCK_K, BLOCK_N) tile of one expert's weight: as stored, or decoded to float32 from packed q."""
    if BITS == 0:
        tile = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn, mask=mask, other=0.0)
    else:
        rows = offs_k // 2 if BITS == 4 else offs_k  # int4: two input rows per stored byte row
        q = tl.load(b_ptr + rows[:, None] * stride_bk + offs_n[None, :] * stride_bn, mask=mask, other=0)
        q = q.to(tl.int32)
        if BITS == 4:
            q = (q >> ((offs_k % 2) * 4)[:, None]) & 0xF
        groups = offs_k // group_size
        sz_offs = groups[:, None] * stride_sg + offs_n[None, :] * stride_sn
        scale = tl.load(scale_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
        zero = tl.load(zero_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
        tile = (q.to(tl.float32) - zero) * scale
    return tile


@triton.jit
def fused_moe_gemm_kernel(
    a_ptr, b_ptr, c_ptr, scale_ptr, zero_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
    num_slots, N, K, group_size, up_offset,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn, stride_se, stride_sg, stride_sn,
    A_ROW_DIV: tl.constexpr, ACT: tl.constexpr, MUL_WEIGHT: tl.constexpr, BITS: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Programs run in launch order, so GROUP_M consecutive slot tiles sweep the output columns together:
    # an expert's weight tile is then read from HBM once per group of slot tiles instead of once per tile
    # (with pid_m = pid // tiles_n a large expert's whole weight streams past L2 for every slot tile).
    pid = tl.program_id(0)
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    tiles_m = tl.num_programs(0) // tiles_n
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    slots = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = slots < num_slots
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    a_rows = slots // A_ROW_DIV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    b_ptr += expert * stride_be
    scale_ptr += expert * stride_se
    zero_ptr += expert * stride_se
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc_up = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b_mask = k_mask[:, None] & n_mask[None, :]
        b = _weight_tile(b_ptr, scale_ptr, zero_ptr, offs_k, offs_n, b_mask, stride_bk, stride_bn, stride_sg,
                         stride_sn, group_size, BITS)
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=PRECISION)
        if ACT == 2:
            b_up = _weight_tile(b_ptr, scale_ptr, zero_ptr, offs_k, offs_n + up_offset, b_mask, stride_bk, stride_bn,
                                stride_sg, stride_sn, group_size, BITS)
            acc_up = tl.dot(a, b_up.to(a.dtype), acc_up, input_precision=PRECISION)
    if ACT == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    if ACT == 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up  # silu(gate) * up
    if MUL_WEIGHT:
        routing = tl.load(weights_ptr + slots, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * routing[:, None]
    c = c_ptr + slots[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])
