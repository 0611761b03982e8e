"""Drop-in expert-FFN entry points with the signatures of the torch dispatch path, and their golden functions.

``grouped_ffn`` matches ``sbmoe.moe.dispatch.grouped_ffn`` (rows already grouped by expert) and
``moe_dispatch`` matches ``sbmoe.moe.dispatch.moe_dispatch`` (routing in, weighted sum out). The golden
functions restate the torch path here because kernels must not import ``sbmoe.moe`` (code flows
moe -> kernels); a test pins them to it. The Triton path is forward-only: when autograd needs gradients
(training), or the operands are not on a GPU the kernels can use, each call takes the torch path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .align import align_sorted_rows, moe_align_block_size
from .gemm import apply_activation, choose_block_m, fused_moe_gemm
from .runtime import can_launch

KINDS = ("swiglu", "gelu")


def _check(w_in: Tensor, w_out: Tensor, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown expert activation {kind!r}")
    if w_in.dim() != 3 or w_out.dim() != 3 or w_in.shape[0] != w_out.shape[0]:
        raise ValueError(f"w_in (E, d, h_in) and w_out (E, h, d) expected, got {tuple(w_in.shape)}, "
                         f"{tuple(w_out.shape)}")
    h_in = 2 * w_out.shape[1] if kind == "swiglu" else w_out.shape[1]
    if w_in.shape[2] != h_in:
        raise ValueError(f"{kind} with hidden {w_out.shape[1]} needs w_in width {h_in}, got {w_in.shape[2]}")


def grouped_ffn_ref(x_sorted: Tensor, offsets: Tensor, w_in: Tensor, w_out: Tensor, kind: str = "swiglu") -> Tensor:
    """Golden function: the torch path, one pair of matmuls per non-empty group (autograd-capable)."""
    _check(w_in, w_out, kind)
    counts = (offsets[1:] - offsets[:-1]).tolist()
    groups = zip(x_sorted.split(counts), w_in.unbind(0), w_out.unbind(0), strict=True)
    outs = [apply_activation(rows @ w_i, kind) @ w_o for rows, w_i, w_o in groups if rows.shape[0]]
    return torch.cat(outs) if outs else x_sorted.new_zeros(0, w_out.shape[-1])


def grouped_ffn(x_sorted: Tensor, offsets: Tensor, w_in: Tensor, w_out: Tensor, kind: str = "swiglu") -> Tensor:
    """Expert FFNs over rows grouped by expert (rows offsets[e]:offsets[e+1] use expert e): x_sorted (S, d),
    w_in (E, d, h_in) with h_in = 2h for SwiGLU, w_out (E, h, d) -> (S, d). Two fused kernels: the first
    applies the activation before storing (the (S, 2h) projection never reaches memory)."""
    _check(w_in, w_out, kind)
    if not can_launch(x_sorted, w_in, w_out, aux=(offsets,)):
        return grouped_ffn_ref(x_sorted, offsets, w_in, w_out, kind)
    if offsets.numel() != w_in.shape[0] + 1:
        raise ValueError(f"offsets has {offsets.numel()} entries for {w_in.shape[0]} experts")
    alignment = align_sorted_rows(offsets, x_sorted.shape[0], choose_block_m(x_sorted.shape[0], w_in.shape[0]))
    hidden = fused_moe_gemm(x_sorted, w_in, alignment, activation=kind)
    return fused_moe_gemm(hidden, w_out, alignment)


def moe_dispatch_ref(x: Tensor, indices: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
                     kind: str = "swiglu") -> Tensor:
    """Golden function: sort slots by expert, grouped FFN, scatter the weighted outputs back (torch path)."""
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w_in.shape[0])
    offsets = torch.zeros(w_in.shape[0] + 1, dtype=torch.long, device=indices.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    tokens = order // indices.shape[1]
    expert_out = grouped_ffn_ref(x[tokens], offsets, w_in, w_out, kind)
    slot_weights = weights.reshape(-1)[order].unsqueeze(-1).to(expert_out.dtype)
    out = torch.zeros_like(x, dtype=expert_out.dtype)
    return out.index_add_(0, tokens, expert_out * slot_weights).to(x.dtype)


def moe_dispatch(x: Tensor, indices: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
                 kind: str = "swiglu") -> Tensor:
    """sum_j weights[n, j] * expert_{indices[n, j]}(x[n]) for x (N, d), indices and weights (N, k).

    Fused path: block alignment, a first GEMM that reads token rows of x in place and applies the
    activation, a second that multiplies by the routing weight and writes one row per (token, choice)
    slot; the k slots of a token are then summed (no atomics, so the result is deterministic).
    """
    _check(w_in, w_out, kind)
    if not can_launch(x, w_in, w_out, aux=(indices, weights)):
        return moe_dispatch_ref(x, indices, weights, w_in, w_out, kind)
    tokens, top_k = indices.shape
    experts = w_in.shape[0]
    alignment = moe_align_block_size(indices, experts, choose_block_m(tokens * top_k, experts))
    hidden = fused_moe_gemm(x, w_in, alignment, top_k=top_k, activation=kind)
    slots = fused_moe_gemm(hidden, w_out, alignment, weights=weights)
    return slots.view(tokens, top_k, slots.shape[-1]).sum(dim=1)
