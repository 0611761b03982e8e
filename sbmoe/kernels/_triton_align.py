"""Triton kernels of ``align.moe_align_block_size``; imported only once Triton is known to run.

Only Triton builtins and this module's own jit helpers are called (``tl.reduce``/``tl.associative_scan`` over
``_add`` rather than ``tl.sum``/``tl.cumsum``): triton's library helpers are fixed as compiled or
interpreted when triton is first imported, which torch._dynamo often does before TRITON_INTERPRET is set,
whereas these modules are imported lazily, under the mode current at the first launch.

One program per expert, twice: first each counts its slots, then each derives its segment start from all
counts (a prefix sum over at most E values, recomputed per program instead of a third launch) and writes
its slots in ascending order with a running in-chunk cumsum. No sort, no atomics, deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .runtime import interpret_mode

INTERPRETED = interpret_mode()  # the mode triton.jit fixes for the kernels below

_CHUNK = 256


@triton.jit
def _add_local(a, b):
    return a + b


# Under the interpreter, Triton's own sum combiner: the interpreter recognises it by identity (never calling
# it, so its compiled/interpreted flavour does not matter) and reduces/scans with numpy, where any other
# combiner runs element by element (~15x slower). Compiled, the local one is the same function.
_add = getattr(tl.standard, "_sum_combine", _add_local) if INTERPRETED else _add_local


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, num_slots, CHUNK: tl.constexpr):
    expert = tl.program_id(0)
    hits = tl.full([CHUNK], 0, tl.int32)
    for start in range(0, num_slots, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(ids_ptr + offs, mask=offs < num_slots, other=-1)
        hits += (ids == expert).to(tl.int32)
    tl.store(counts_ptr + expert, tl.reduce(hits, 0, _add))


@triton.jit
def _place_kernel(ids_ptr, counts_ptr, sorted_ptr, expert_ids_ptr, num_padded_ptr, num_slots, num_experts,
                  BLOCK_M: tl.constexpr, EXPERTS_POW2: tl.constexpr, CHUNK: tl.constexpr):
    expert = tl.program_id(0)
    experts = tl.arange(0, EXPERTS_POW2)
    counts = tl.load(counts_ptr + experts, mask=experts < num_experts, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    start = tl.reduce(tl.where(experts < expert, padded, 0), 0, _add)
    if expert == 0:
        tl.store(num_padded_ptr, tl.reduce(padded, 0, _add))
    placed = start
    for chunk in range(0, num_slots, CHUNK):
        offs = chunk + tl.arange(0, CHUNK)
        ids = tl.load(ids_ptr + offs, mask=offs < num_slots, other=-1)
        mine = (ids == expert).to(tl.int32)
        rank = tl.associative_scan(mine, 0, _add) - 1  # inclusive prefix sum
        tl.store(sorted_ptr + placed + rank, offs.to(tl.int32), mask=mine == 1)
        placed += tl.reduce(mine, 0, _add)
    blocks = tl.reduce(tl.where(experts == expert, padded, 0), 0, _add) // BLOCK_M
    first = start // BLOCK_M
    for block in range(0, blocks, CHUNK):
        offs = block + tl.arange(0, CHUNK)
        tl.store(expert_ids_ptr + first + offs, tl.full([CHUNK], 0, tl.int32) + expert, mask=offs < blocks)


def launch_align(flat_ids: Tensor, num_experts: int, block_m: int, sorted_ids: Tensor, expert_ids: Tensor,
                 num_padded: Tensor) -> None:
    """Fill the prefilled buffers (sentinels already in place) for ``flat_ids`` (num_slots,)."""
    counts = flat_ids.new_zeros(num_experts, dtype=sorted_ids.dtype)
    num_slots = flat_ids.numel()
    _count_kernel[(num_experts,)](flat_ids, counts, num_slots, CHUNK=_CHUNK)
    _place_kernel[(num_experts,)](flat_ids, counts, sorted_ids, expert_ids, num_padded, num_slots, num_experts,
                                  BLOCK_M=block_m, EXPERTS_POW2=triton.next_power_of_2(num_experts), CHUNK=_CHUNK)
