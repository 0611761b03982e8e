"""Fused grouped GEMM over experts on block-aligned slots (float or packed weights) and its golden function.

``fused_moe_gemm`` is the building block of both MoE layers: row s of its result is
``act(a[s // top_k] @ W[expert(s)]) * weights.flat[s]`` for every slot s the alignment holds, so a first
layer reads token rows directly (no gathered copy of x) and a second layer reads and writes slot rows.
``grouped_gemm`` is the same product over rows already grouped by expert (``grouped_ffn``'s layout).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .align import BlockAlignment, align_sorted_rows
from .quant import PackedWeight
from .runtime import can_launch, interpret_mode

ACTIVATIONS = ("none", "gelu", "swiglu")


def apply_activation(hidden: Tensor, activation: str) -> Tensor:
    """The torch activation the kernel fuses: SwiGLU takes a (.., 2h) [gate, up] projection."""
    if activation == "none":
        return hidden
    if activation == "gelu":
        return F.gelu(hidden)
    if activation == "swiglu":
        gate, up = hidden.chunk(2, dim=-1)
        return F.silu(gate) * up
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def weight_shape(w: Tensor | PackedWeight) -> tuple[int, int, int]:
    """(E, K_in, N_out) of float or packed stacked expert weights."""
    if isinstance(w, PackedWeight):
        return w.num_experts, w.in_features, w.out_features
    if w.dim() != 3:
        raise ValueError(f"expert weights must be (E, K, N), got {tuple(w.shape)}")
    return tuple(w.shape)  # type: ignore[return-value]


def choose_block_m(num_slots: int, num_experts: int) -> int:
    """Tile height from the mean rows per expert: small tiles waste less padding when experts get few rows,
    tall ones read each weight tile for more rows when they get many."""
    mean_rows = num_slots / max(num_experts, 1)
    if mean_rows <= 16:
        return 16
    if mean_rows <= 64:
        return 32
    return 64 if mean_rows <= 128 else 128


@dataclass(frozen=True)
class TileConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8  # slot tiles that sweep the output columns together (L2 reuse of weight tiles)


def tile_config(block_m: int, n_out: int, k_in: int, interpreting: bool) -> TileConfig:
    """Tile widths: large tiles on a GPU (tensor-core friendly), the narrowest that cover tiny shapes when
    interpreting (each program costs numpy calls, so fewer, fuller tiles run faster there)."""
    if interpreting:
        fit = lambda size: min(64, max(16, 1 << (size - 1).bit_length()))  # noqa: E731
        return TileConfig(fit(n_out), fit(k_in), 4, 1)
    if block_m >= 64:
        return TileConfig(128, 64, 8, 3)
    return TileConfig(64, 64, 4, 4)


@functools.cache
def shared_memory_limit(device_index: int) -> int:
    """Bytes of shared memory one program may use on that GPU (read once per device, not per launch)."""
    properties = torch.cuda.get_device_properties(device_index)
    return getattr(properties, "shared_memory_per_block_optin", 99 * 1024)


SHARED_MEMORY_MARGIN = 8192  # bytes Triton adds beyond the pipelined operand tiles (4 KiB seen on an H200)


def shared_memory_bytes(config: TileConfig, block_m: int, a_bytes: int, weight_bytes: int, weight_tiles: int) -> int:
    """Upper estimate of a launch's shared memory: ``num_stages`` copies of one A tile (``a_bytes`` per
    element) and ``weight_tiles`` weight tiles (``weight_bytes`` per element: a packed tile also stages its
    per-element scale and zero loads)."""
    per_stage = block_m * config.block_k * a_bytes + weight_tiles * config.block_k * config.block_n * weight_bytes
    return config.num_stages * per_stage + SHARED_MEMORY_MARGIN


def fit_shared_memory(config: TileConfig, block_m: int, a_bytes: int, weight_bytes: int, weight_tiles: int,
                      limit: int) -> TileConfig:
    """Fewer pipeline stages, then narrower K tiles, until the launch fits the device's shared memory (fp32
    or packed operands with the large bf16 tiles would not compile: Triton raises OutOfResources)."""
    while shared_memory_bytes(config, block_m, a_bytes, weight_bytes, weight_tiles) > limit:
        if config.num_stages > 1:
            config = replace(config, num_stages=config.num_stages - 1)
        elif config.block_k > 16:
            config = replace(config, block_k=config.block_k // 2)
        else:
            break
    return config


def _check(a: Tensor, w: Tensor | PackedWeight, alignment: BlockAlignment, top_k: int, weights: Tensor | None,
           activation: str) -> tuple[int, int]:
    """Validate the operands; returns (num_experts, output width)."""
    experts, k_in, n_w = weight_shape(w)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if a.dim() != 2 or a.shape[1] != k_in:
        raise ValueError(f"a must be (rows, {k_in}), got {tuple(a.shape)}")
    if a.shape[0] * top_k != alignment.num_slots:
        raise ValueError(f"{a.shape[0]} rows x top_k {top_k} != {alignment.num_slots} aligned slots")
    if weights is not None and weights.numel() != alignment.num_slots:
        raise ValueError(f"weights has {weights.numel()} entries for {alignment.num_slots} slots")
    if activation == "swiglu" and n_w % 2:
        raise ValueError(f"SwiGLU needs an even projection width, got {n_w}")
    return experts, n_w // 2 if activation == "swiglu" else n_w


def fused_moe_gemm_ref(a: Tensor, w: Tensor | PackedWeight, alignment: BlockAlignment, *, top_k: int = 1,
                       weights: Tensor | None = None, activation: str = "none") -> Tensor:
    """Golden function: one torch matmul per expert present in the alignment, in a's dtype."""
    _, n_out = _check(a, w, alignment, top_k, weights, activation)
    dense = w.dequantize(a.dtype) if isinstance(w, PackedWeight) else w
    out = a.new_zeros(alignment.num_slots, n_out)
    used = int(alignment.num_padded.item())
    slots = alignment.sorted_ids[:used].long()
    experts = alignment.expert_ids.repeat_interleave(alignment.block_m)[:used]
    real = slots < alignment.num_slots
    for expert in experts[real].unique().tolist():
        mine = slots[real & (experts == expert)]
        y = apply_activation(a[mine // top_k] @ dense[expert], activation)
        if weights is not None:
            y = y * weights.reshape(-1)[mine].unsqueeze(-1).to(y.dtype)
        out[mine] = y
    return out


def fused_moe_gemm(a: Tensor, w: Tensor | PackedWeight, alignment: BlockAlignment, *, top_k: int = 1,
                   weights: Tensor | None = None, activation: str = "none") -> Tensor:
    """(num_slots, N_out) with row s = act(a[s // top_k] @ W[expert(s)]) * weights.flat[s] (see module doc).

    ``a`` (rows, K) with rows * top_k = alignment.num_slots; ``w`` float (E, K, N) in a's dtype or a
    ``PackedWeight``; ``weights`` (N, top_k) routing weights or None; ``activation`` none | gelu | swiglu
    (SwiGLU halves the width). Slots the alignment drops stay zero. Falls back to the golden function
    where Triton cannot run.
    """
    _check(a, w, alignment, top_k, weights, activation)
    packed = isinstance(w, PackedWeight)
    operands = (a,) if packed else (a, w)
    aux = [alignment.sorted_ids, alignment.expert_ids, alignment.num_padded]
    if packed:
        aux += [w.qweight, w.scale, w.zero]
    if weights is not None:
        aux.append(weights)
    if not can_launch(*operands, aux=tuple(aux)):
        return fused_moe_gemm_ref(a, w, alignment, top_k=top_k, weights=weights, activation=activation)
    return _launch(a, w, alignment, top_k, weights, activation)


def _launch(a: Tensor, w: Tensor | PackedWeight, alignment: BlockAlignment, top_k: int, weights: Tensor | None,
            activation: str) -> Tensor:
    import triton

    from . import _triton_gemm as kernels

    _, k_in, n_w = weight_shape(w)
    n_out = n_w // 2 if activation == "swiglu" else n_w
    out = a.new_zeros(alignment.num_slots, n_out)
    if alignment.num_slots == 0 or n_out == 0:
        return out
    interpreting = interpret_mode()
    config = tile_config(alignment.block_m, n_out, k_in, interpreting)
    if isinstance(w, PackedWeight):
        b, bits, group_size = w.qweight, w.bits, w.group_size
        scale, zero = w.scale.contiguous(), w.zero.contiguous()
        scale_strides = scale.stride()
        weight_bytes = b.element_size() + scale.element_size() + zero.element_size()
    else:
        b, bits, group_size = w, 0, 1
        scale = zero = a
        scale_strides = (0, 0, 0)
        weight_bytes = b.element_size()
    if not interpreting:
        config = fit_shared_memory(config, alignment.block_m, a.element_size(), weight_bytes,
                                   2 if activation == "swiglu" else 1, shared_memory_limit(a.device.index))
    # fp32 as torch computes it unless the user allowed TF32; the setting is ignored for fp16/bf16 operands
    tf32 = a.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    precision = "tf32" if tf32 else "ieee"
    act = {"none": kernels.ACT_NONE, "gelu": kernels.ACT_GELU, "swiglu": kernels.ACT_SWIGLU}[activation]
    routing = a if weights is None else weights.reshape(-1).contiguous()
    grid = (alignment.expert_ids.numel() * triton.cdiv(n_out, config.block_n),)
    launch_options = {} if interpreting else {"num_warps": config.num_warps, "num_stages": config.num_stages}
    kernels.fused_moe_gemm_kernel[grid](
        a, b, out, scale, zero, routing, alignment.sorted_ids, alignment.expert_ids, alignment.num_padded,
        alignment.num_slots, n_out, k_in, group_size, n_out,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
        *scale_strides,
        A_ROW_DIV=top_k, ACT=act, MUL_WEIGHT=weights is not None, BITS=bits, PRECISION=precision,
        BLOCK_M=alignment.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
        **launch_options,
    )
    return out


def grouped_gemm_ref(x_sorted: Tensor, offsets: Tensor, w: Tensor | PackedWeight) -> Tensor:
    """Golden function: rows offsets[e]:offsets[e+1] times expert e's (decoded) weight, one matmul each."""
    dense = w.dequantize(x_sorted.dtype) if isinstance(w, PackedWeight) else w
    counts = (offsets[1:] - offsets[:-1]).tolist()
    outs = [rows @ w_e for rows, w_e in zip(x_sorted.split(counts), dense.unbind(0), strict=True) if rows.shape[0]]
    return torch.cat(outs) if outs else x_sorted.new_zeros(0, dense.shape[-1])


def grouped_gemm(x_sorted: Tensor, offsets: Tensor, w: Tensor | PackedWeight) -> Tensor:
    """(S, N_out): x_sorted (S, K) grouped by expert as ``offsets`` (E + 1,) says, times float weights
    (E, K, N_out) or packed int4/int8 ones (the dequant GEMM: weights are decoded tile by tile in the
    kernel, never materialised in float). Falls back to the golden function where Triton cannot run."""
    packed_aux = (w.qweight, w.scale, w.zero) if isinstance(w, PackedWeight) else ()
    operands = (x_sorted,) if isinstance(w, PackedWeight) else (x_sorted, w)
    if not can_launch(*operands, aux=(offsets, *packed_aux)):
        return grouped_gemm_ref(x_sorted, offsets, w)
    experts, _, _ = weight_shape(w)
    if offsets.numel() != experts + 1:
        raise ValueError(f"offsets has {offsets.numel()} entries for {experts} experts")
    alignment = align_sorted_rows(offsets, x_sorted.shape[0], choose_block_m(x_sorted.shape[0], experts))
    return fused_moe_gemm(x_sorted, w, alignment)
