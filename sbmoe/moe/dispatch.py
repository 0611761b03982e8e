"""Sort-based token dispatch: align token slots by expert, then one matmul per expert group.

The split follows fused-MoE kernels: ``align_by_expert`` is a pure index step (which token slot goes
where), ``grouped_ffn`` the compute over contiguous expert groups; ``sort_dispatch`` composes the two and
scatters the weighted outputs back to their tokens. ``moe_dispatch`` is the entry the layers call: on a
CUDA device with Triton installed, forward passes go to the fused kernels of ``sbmoe.kernels`` (same
signature; they fall back to the torch path whenever autograd needs gradients), elsewhere ``sort_dispatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels


@dataclass
class ExpertAlignment:
    """Token slots sorted by expert.

    ``order`` (S,) maps sorted position -> flat slot index (slot = token * k + choice); ``tokens`` (S,) the
    token of each sorted slot; ``offsets`` (E + 1,) the start of each expert's group, so expert e owns
    sorted positions offsets[e]:offsets[e + 1] (empty groups have equal offsets).
    """

    order: Tensor
    tokens: Tensor
    offsets: Tensor


def align_by_expert(indices: Tensor, num_experts: int) -> ExpertAlignment:
    """Sort the (N, k) expert choices by expert id (stable, so tokens keep their order inside a group)."""
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=indices.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    return ExpertAlignment(order=order, tokens=order // indices.shape[1], offsets=offsets)


def activation(hidden: Tensor, kind: str) -> Tensor:
    """SwiGLU takes a (.., 2h) gate-and-up projection; GELU a (.., h) one."""
    if kind == "swiglu":
        gate, up = hidden.chunk(2, dim=-1)
        return F.silu(gate) * up
    if kind == "gelu":
        return F.gelu(hidden)
    raise ValueError(f"unknown expert activation {kind!r}")


def grouped_ffn(x_sorted: Tensor, offsets: Tensor, w_in: Tensor, w_out: Tensor, kind: str = "swiglu") -> Tensor:
    """Expert FFNs over rows already grouped by expert: rows offsets[e]:offsets[e+1] use expert e.

    x_sorted (S, d); w_in (E, d, h_in) with h_in = 2h for SwiGLU; w_out (E, h, d). Returns (S, d).
    The torch reference path: one pair of matmuls per non-empty group.
    """
    counts = (offsets[1:] - offsets[:-1]).tolist()
    # split/unbind rather than slicing in a loop: their backward is one cat/stack, where per-expert
    # indexing would allocate a full-size zero gradient for every expert (O(E) copies of the weights)
    groups = zip(x_sorted.split(counts), w_in.unbind(0), w_out.unbind(0), strict=True)
    outs = [activation(rows @ w_i, kind) @ w_o for rows, w_i, w_o in groups if rows.shape[0]]
    if not outs:
        return x_sorted.new_zeros(0, w_out.shape[-1])
    return torch.cat(outs)


def moe_dispatch(x: Tensor, indices: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
                 kind: str = "swiglu") -> Tensor:
    """sum_j weights[n, j] * expert_{indices[n, j]}(x[n]) for x (N, d), indices and weights (N, k): the
    fused Triton kernels on a GPU, else ``sort_dispatch``."""
    if x.is_cuda and kernels.triton_available():
        return kernels.moe_dispatch(x, indices, weights, w_in, w_out, kind)
    return sort_dispatch(x, indices, weights, w_in, w_out, kind)


def sort_dispatch(x: Tensor, indices: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
                  kind: str = "swiglu") -> Tensor:
    """The torch path on any device: sort slots by expert, one matmul pair per expert, scatter back."""
    alignment = align_by_expert(indices, w_in.shape[0])
    expert_out = grouped_ffn(x[alignment.tokens], alignment.offsets, w_in, w_out, kind)
    slot_weights = weights.reshape(-1)[alignment.order].unsqueeze(-1).to(expert_out.dtype)
    out = torch.zeros_like(x, dtype=expert_out.dtype)
    return out.index_add_(0, alignment.tokens, expert_out * slot_weights).to(x.dtype)


def masked_loop_dispatch(x: Tensor, indices: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
                         kind: str = "swiglu") -> Tensor:
    """The common baseline: for each expert, find its tokens with a mask and run them (benchmarks)."""
    out = torch.zeros_like(x)
    for expert, (w_i, w_o) in enumerate(zip(w_in.unbind(0), w_out.unbind(0), strict=True)):
        token, choice = torch.nonzero(indices == expert, as_tuple=True)
        if token.numel():
            y = activation(x[token] @ w_i, kind) @ w_o
            out.index_add_(0, token, y * weights[token, choice].unsqueeze(-1))
    return out
