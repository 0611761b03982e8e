"""GPTQ (Frantar et al., 2023) for weights used as ``x @ W``: quantise input rows one at a time and spread
each row's error over the rows not yet quantised, through the Cholesky factor of the inverse Hessian.

W (K_in, N_out) is GPTQ's transposed layout (nn.Linear's weight is (N_out, K_in)): its input rows are
GPTQ's columns. H = X^T X over calibration inputs X (tokens, K_in). Lazy batch updates: rows are
processed in blocks of ``block_size``; inside a block the update touches only the block, and the
accumulated error updates the remaining rows once per block. Grids follow ``rtn``: each group's scale and
zero come from its rows as updated when the group starts (or from the original rows under ``act_order``,
whose order would otherwise split groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .rtn import GroupQuant, check_bits, effective_group, grid_params, quantize_values


@dataclass
class GPTQConfig:
    block_size: int = 128
    damp: float = 0.01  # added to H's diagonal, as a share of its mean diagonal
    act_order: bool = False  # quantise rows in order of decreasing Hessian diagonal


def damped_inverse_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (so U^T U is that inverse)."""
    h = hessian.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int, group_size: int = 128,
                  config: GPTQConfig | None = None) -> GroupQuant:
    """GPTQ of W (K_in, N_out) against H (K_in, K_in); works in W's dtype (float64 for references)."""
    config = config or GPTQConfig()
    bits = check_bits(bits)
    k_in, n_out = weight.shape
    group = effective_group(k_in, group_size)
    w = weight.clone()
    h = hessian.to(w.dtype).clone()
    dead = h.diagonal() == 0  # inputs never seen: their rows cannot matter
    h[dead, dead] = 1
    w[dead] = 0
    scale = torch.zeros(k_in // group, n_out, dtype=w.dtype)
    zero = torch.zeros_like(scale)
    if config.act_order:
        for g in range(k_in // group):
            scale[g], zero[g] = grid_params(w[g * group:(g + 1) * group], bits)
        order = torch.argsort(h.diagonal(), descending=True)
    else:
        order = torch.arange(k_in)
    w, h = w[order], h[order][:, order]
    u = damped_inverse_factor(h, config.damp)
    q = torch.zeros_like(w)
    for start in range(0, k_in, config.block_size):
        end = min(start + config.block_size, k_in)
        errors = torch.zeros(end - start, n_out, dtype=w.dtype)
        for i in range(start, end):
            row = int(order[i])
            g = row // group
            if not config.act_order and row % group == 0:
                scale[g], zero[g] = grid_params(w[i:i + group], bits)
            q[i] = quantize_values(w[i], scale[g], zero[g], bits)
            err = (w[i] - (q[i] - zero[g]) * scale[g]) / u[i, i]
            w[i + 1:end] -= torch.outer(u[i, i + 1:end], err)
            errors[i - start] = err
        w[end:] -= u[start:end, end:].T @ errors
    restored = torch.empty_like(q)
    restored[order] = q
    return GroupQuant(restored.to(torch.uint8), scale.float(), zero.float(), bits, group)
