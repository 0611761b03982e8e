"""Triton kernels for sort-based MoE dispatch, each beside the torch golden function it must match.

Kernels take plain tensors and never import ``sbmoe.moe``. Every public entry falls back to its golden
function when Triton cannot run (``triton_available()`` is False), when autograd needs gradients, or when
the operands are not where the kernels can read them, so callers may use these unconditionally.
"""

from __future__ import annotations

from .align import BlockAlignment, align_sorted_rows, moe_align_block_size, moe_align_block_size_ref
from .ffn import grouped_ffn, grouped_ffn_ref, moe_dispatch, moe_dispatch_ref
from .gemm import fused_moe_gemm, fused_moe_gemm_ref, grouped_gemm, grouped_gemm_ref
from .quant import PackedWeight, dequantize, pack_int4, unpack_int4
from .runtime import triton_available

__all__ = [
    "BlockAlignment", "PackedWeight", "align_sorted_rows", "dequantize", "fused_moe_gemm", "fused_moe_gemm_ref",
    "grouped_ffn", "grouped_ffn_ref", "grouped_gemm", "grouped_gemm_ref", "moe_align_block_size",
    "moe_align_block_size_ref", "moe_dispatch", "moe_dispatch_ref", "pack_int4", "triton_available",
    "unpack_int4",
]
