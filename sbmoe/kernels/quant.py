"""Packed int4/int8 expert weights with grouped asymmetric scales: the storage spec and its golden functions.

A weight W (K_in, N_out), used as ``x @ W``, is quantised per output column in groups of ``group_size``
consecutive input rows: integers q in [0, 2**bits - 1] with ``W ≈ (q - zero) * scale``, where ``scale`` and
``zero`` are float tensors (K_in // group_size, N_out) (``zero`` may be fractional). Storage: bits=8 ->
uint8 (K_in, N_out); bits=4 -> uint8 (K_in // 2, N_out) whose row r holds q[2r] in the low nibble and
q[2r + 1] in the high nibble. Experts stack every tensor along a leading E dim. The quantiser lives
elsewhere; this module only fixes the format and decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def pack_int4(q: Tensor) -> Tensor:
    """(..., K, N) integers in [0, 15] -> uint8 (..., K // 2, N): even rows low nibble, odd rows high."""
    if q.shape[-2] % 2:
        raise ValueError(f"int4 packing needs an even number of input rows, got {q.shape[-2]}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("int4 values must lie in [0, 15]")
    q = q.to(torch.uint8)
    return q[..., 0::2, :] | (q[..., 1::2, :] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 (..., K // 2, N) -> uint8 (..., K, N): the inverse of ``pack_int4``."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-2).reshape(*packed.shape[:-2], 2 * packed.shape[-2], packed.shape[-1])


def dequantize(qweight: Tensor, scale: Tensor, zero: Tensor, bits: int, group_size: int,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Golden decode to (..., K_in, N_out): ``(q - zero) * scale`` in float32, then cast to ``dtype``."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    q = unpack_int4(qweight) if bits == 4 else qweight
    groups = scale.shape[-2]
    expand = lambda t: t.float().repeat_interleave(group_size, dim=-2)  # noqa: E731
    if q.shape[-2] != groups * group_size:
        raise ValueError(f"{q.shape[-2]} input rows do not form {groups} groups of {group_size}")
    return ((q.float() - expand(zero)) * expand(scale)).to(dtype)


@dataclass
class PackedWeight:
    """Stacked expert weights in the packed format, checked against the spec on construction.

    ``qweight`` (E, K_in, N_out) for bits=8 or (E, K_in // 2, N_out) for bits=4, uint8; ``scale`` and
    ``zero`` (E, K_in // group_size, N_out) float.
    """

    qweight: Tensor
    scale: Tensor
    zero: Tensor
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.qweight.dtype != torch.uint8 or self.qweight.dim() != 3:
            shape = tuple(self.qweight.shape)
            raise ValueError(f"qweight must be uint8 (E, rows, N_out), got {self.qweight.dtype} {shape}")
        if self.group_size < 1 or self.in_features % self.group_size:
            raise ValueError(f"group_size {self.group_size} must divide K_in = {self.in_features}")
        expected = (self.qweight.shape[0], self.in_features // self.group_size, self.out_features)
        for name in ("scale", "zero"):
            tensor = getattr(self, name)
            if tuple(tensor.shape) != expected or not tensor.is_floating_point():
                raise ValueError(f"{name} must be float {expected}, got {tensor.dtype} {tuple(tensor.shape)}")

    @property
    def num_experts(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * (2 if self.bits == 4 else 1)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[2]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(E, K_in, N_out) in ``dtype`` (golden)."""
        return dequantize(self.qweight, self.scale, self.zero, self.bits, self.group_size, dtype)
