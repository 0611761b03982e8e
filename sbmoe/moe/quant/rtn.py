"""Round-to-nearest (RTN) quantisation: asymmetric, per output column in groups of input rows, any bits 1-8.

The grid is the one ``sbmoe.kernels.quant`` stores: W (K_in, N_out) ≈ (q - zero) * scale with q in
[0, 2**bits - 1], scale and zero per (group of ``group_size`` input rows, output column). The zero point is
kept fractional (``-min / scale``) so the grid's ends are exactly the group's min and max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import MAX_BITS, MIN_BITS


def check_bits(bits: int) -> int:
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return int(bits)


def effective_group(k_in: int, group_size: int) -> int:
    """``group_size`` when it divides K_in, else one group over all K_in rows (small layers)."""
    return group_size if 0 < group_size <= k_in and k_in % group_size == 0 else k_in


@dataclass
class GroupQuant:
    """Integers q (K_in, N_out), scale and zero (K_in // group_size, N_out): one quantised weight."""

    q: Tensor
    scale: Tensor
    zero: Tensor
    bits: int
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(q - zero) * scale in float32, as ``sbmoe.kernels.quant.dequantize`` decodes it (bit for bit)."""
        expand = lambda t: t.float().repeat_interleave(self.group_size, dim=-2)  # noqa: E731
        return ((self.q.float() - expand(self.zero)) * expand(self.scale)).to(dtype)


def grid_params(rows: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and zero of groups of rows (..., g, N_out) -> (..., N_out): each grid spans its column's
    [min, max] (a constant column gets scale 1 and is reproduced exactly)."""
    lo, hi = rows.min(dim=-2).values, rows.max(dim=-2).values
    span = hi - lo
    scale = torch.where(span > 0, span / (2 ** bits - 1), torch.ones_like(span))
    return scale, -lo / scale


def quantize_values(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Integers q in [0, 2**bits - 1] nearest to w on the grid (scale, zero); same shape as w."""
    return torch.clamp(torch.round(w / scale + zero), 0, 2 ** bits - 1)


def rtn_quantize(weight: Tensor, bits: int, group_size: int = 128) -> GroupQuant:
    """RTN of W (K_in, N_out), every group's grid from its own min and max."""
    bits = check_bits(bits)
    k_in, n_out = weight.shape
    group = effective_group(k_in, group_size)
    grouped = weight.reshape(k_in // group, group, n_out)
    scale, zero = grid_params(grouped, bits)
    q = quantize_values(grouped, scale.unsqueeze(1), zero.unsqueeze(1), bits).reshape(k_in, n_out)
    return GroupQuant(q.to(torch.uint8), scale.float(), zero.float(), bits, group)
