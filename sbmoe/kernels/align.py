"""Block-size alignment of routed token slots: the index step of a fused MoE GEMM.

Every (token, choice) slot ``s = token * top_k + choice`` goes to its expert's segment; each segment is
padded to a multiple of ``block_m`` so that one GEMM tile of ``block_m`` rows never mixes experts. The
layout follows vLLM's ``moe_align_block_size``, with every position of the worst-case-sized buffers
defined, so the Triton path and the golden function can be compared exactly:

``sorted_ids`` (P,) int32: slot ids grouped by expert (ascending slot inside a group, as a stable sort
    gives), each group padded with the sentinel ``num_slots``; positions past the padded total also hold it.
``expert_ids`` (P // block_m,) int32: the expert of each tile; -1 past the padded total.
``num_padded`` (1,) int32: the padded total, kept on the device so launching needs no host sync.
P = ceil((num_slots + E * (block_m - 1)) / block_m) * block_m, the most any routing can need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .runtime import can_launch


@dataclass
class BlockAlignment:
    """Slots grouped by expert and padded per expert to whole ``block_m`` tiles (see the module docstring)."""

    sorted_ids: Tensor
    expert_ids: Tensor
    num_padded: Tensor
    block_m: int
    num_slots: int


def padded_capacity(num_slots: int, num_experts: int, block_m: int) -> int:
    """Buffer length that fits any routing of ``num_slots`` slots over ``num_experts`` experts."""
    worst = num_slots + num_experts * (block_m - 1)
    return -(-worst // block_m) * block_m


def _check(indices: Tensor, num_experts: int, block_m: int) -> None:
    if block_m < 1 or num_experts < 1:
        raise ValueError(f"block_m and num_experts must be positive, got {block_m}, {num_experts}")
    if indices.is_floating_point():
        raise TypeError(f"expert indices must be integers, got {indices.dtype}")


def moe_align_block_size_ref(indices: Tensor, num_experts: int, block_m: int) -> BlockAlignment:
    """Golden function: one expert at a time, exactly as the layout is defined. ``indices`` (N, k)."""
    _check(indices, num_experts, block_m)
    flat = indices.reshape(-1)
    num_slots = flat.numel()
    capacity = padded_capacity(num_slots, num_experts, block_m)
    sorted_ids = torch.full((capacity,), num_slots, dtype=torch.int32, device=flat.device)
    expert_ids = torch.full((capacity // block_m,), -1, dtype=torch.int32, device=flat.device)
    position = 0
    for expert in range(num_experts):
        slots = torch.nonzero(flat == expert).flatten()
        sorted_ids[position:position + slots.numel()] = slots.to(torch.int32)
        blocks = -(-slots.numel() // block_m)
        expert_ids[position // block_m:position // block_m + blocks] = expert
        position += blocks * block_m
    num_padded = torch.tensor([position], dtype=torch.int32, device=flat.device)
    return BlockAlignment(sorted_ids, expert_ids, num_padded, block_m, num_slots)


def moe_align_block_size(indices: Tensor, num_experts: int, block_m: int) -> BlockAlignment:
    """Triton path (two launches, no host sync, no sort); the golden function where Triton cannot run.

    Expert ids outside [0, num_experts) are dropped by the kernel; the golden function drops them too.
    """
    _check(indices, num_experts, block_m)
    if not can_launch(aux=(indices,)):
        return moe_align_block_size_ref(indices, num_experts, block_m)
    flat = indices.reshape(-1).contiguous()
    num_slots = flat.numel()
    capacity = padded_capacity(num_slots, num_experts, block_m)
    sorted_ids = torch.full((capacity,), num_slots, dtype=torch.int32, device=flat.device)
    expert_ids = torch.full((capacity // block_m,), -1, dtype=torch.int32, device=flat.device)
    num_padded = torch.zeros(1, dtype=torch.int32, device=flat.device)
    _launch(flat, num_experts, block_m, sorted_ids, expert_ids, num_padded)
    return BlockAlignment(sorted_ids, expert_ids, num_padded, block_m, num_slots)


def _launch(flat: Tensor, num_experts: int, block_m: int, sorted_ids: Tensor, expert_ids: Tensor,
            num_padded: Tensor) -> None:
    from ._triton_align import launch_align

    launch_align(flat, num_experts, block_m, sorted_ids, expert_ids, num_padded)


def align_sorted_rows(offsets: Tensor, num_rows: int, block_m: int) -> BlockAlignment:
    """Alignment for rows already grouped by expert (``grouped_ffn``'s input): slot i is sorted row i.

    ``offsets`` (E + 1,) as ``align_by_expert`` gives them, ``num_rows`` = offsets[-1] (the caller knows it
    from its tensor's shape, so no host sync is needed): each row's expert comes from a device-side search.
    """
    rows = torch.arange(num_rows, device=offsets.device, dtype=offsets.dtype)
    row_expert = torch.searchsorted(offsets[1:], rows, right=True)
    return moe_align_block_size(row_expert.unsqueeze(1), offsets.numel() - 1, block_m)
