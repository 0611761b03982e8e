"""Packed storage of quantised weights in ``sbmoe.kernels.quant``'s format, and the dequant matmul path.

Any bit width fits one of the two containers the format defines: 1-4 bits as int4 (two per byte), 5-8
bits as int8; the grid (scale, zero) is the quantiser's, so decoding gives the fake-quant values exactly.
``PackedLinear`` runs ``x @ W + b`` through ``sbmoe.kernels.grouped_gemm`` (one expert, one group), which
decodes tiles inside the Triton kernel on a GPU and falls back to the golden decode elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...kernels import PackedWeight, grouped_gemm, pack_int4
from .rtn import GroupQuant


def storage_bits(bits: int) -> int:
    """The container a bit width is stored in: int4 up to 4 bits, int8 above."""
    return 4 if bits <= 4 else 8


def pack(quantized: GroupQuant | list[GroupQuant]) -> PackedWeight:
    """One quantised weight (stacked as E = 1) or several of equal shape and bits (stacked along E)."""
    parts = quantized if isinstance(quantized, list) else [quantized]
    bits, group = parts[0].bits, parts[0].group_size
    if any(p.bits != bits or p.group_size != group for p in parts):
        raise ValueError("weights packed together need one bit width and one group size")
    q = torch.stack([p.q for p in parts]).to(torch.uint8)
    container = storage_bits(bits)
    qweight = pack_int4(q) if container == 4 else q
    return PackedWeight(qweight, torch.stack([p.scale for p in parts]).float(),
                        torch.stack([p.zero for p in parts]).float(), container, group)


def packed_state(packed: PackedWeight, bits: int) -> dict[str, Tensor | int]:
    """A plain dict (torch.save-able with weights_only) of a packed weight and its logical bit width."""
    return {"qweight": packed.qweight, "scale": packed.scale, "zero": packed.zero, "container": packed.bits,
            "group_size": packed.group_size, "bits": bits}


def from_state(state: dict) -> PackedWeight:
    return PackedWeight(state["qweight"], state["scale"], state["zero"], int(state["container"]),
                        int(state["group_size"]))


def packed_matmul(x: Tensor, packed: PackedWeight, expert: int = 0) -> Tensor:
    """x (..., K_in) @ the decoded weight of one expert of ``packed`` -> (..., N_out)."""
    one = packed if packed.num_experts == 1 else PackedWeight(
        packed.qweight[expert:expert + 1], packed.scale[expert:expert + 1], packed.zero[expert:expert + 1],
        packed.bits, packed.group_size)
    flat = x.reshape(-1, x.shape[-1]).float()
    offsets = torch.tensor([0, flat.shape[0]], device=x.device)
    return grouped_gemm(flat, offsets, one).reshape(*x.shape[:-1], one.out_features).to(x.dtype)


class PackedLinear(nn.Module):
    """A drop-in for nn.Linear whose weight lives packed: forward is the dequant matmul."""

    def __init__(self, packed: PackedWeight, bias: Tensor | None, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.group_size = packed.group_size
        self.container = packed.bits
        self.register_buffer("qweight", packed.qweight)
        self.register_buffer("scale", packed.scale)
        self.register_buffer("zero", packed.zero)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = packed.in_features, packed.out_features

    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scale, self.zero, self.container, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        y = packed_matmul(x, self.packed())
        return y if self.bias is None else y + self.bias.to(y.dtype)
