"""ReXMoE: routers that may choose experts of adjacent layers, and progressive scaling routing (PSR).

Our reading of the ReXMoE abstract (no public code exists; this design is ours, not the authors'):
layer l owns experts l*E .. l*E + E-1 of one shared ``ExpertFFNBank``. With reuse factor r, a layer's
candidates are the experts of a group of r adjacent layers (``group``: layers [g*r, (g+1)*r) share one
pool) or of the r layers around it (``sliding``). Total expert parameters are the layer-local baseline's
(the same L*E experts exist) and so is the active count per token (top-k of equal-sized experts); only
each router grows, to r*E outputs. The load-balancing loss counts routing over a whole pool, across
all layers that draw on it. PSR masks the non-local candidates at the start of training and unmasks
them over the first fraction p of steps, linearly or in r-1 equal steps, nearest layers first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .moe_layer import MoEFeedForward
from .pools import POOL_MODES, PSR_SCHEDULES
from .router import switch_load_balancing_loss


def layer_experts(layer: int, experts_per_layer: int) -> list[int]:
    return list(range(layer * experts_per_layer, (layer + 1) * experts_per_layer))


def candidate_layers(layer: int, num_layers: int, reuse: int, mode: str) -> list[int]:
    """The layers whose experts ``layer`` may route to, nearest first (itself first)."""
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pool mode {mode!r}; choose one of {', '.join(POOL_MODES)}")
    if mode == "local" or reuse == 1:
        return [layer]
    if reuse > num_layers:
        raise ValueError(f"reuse {reuse} exceeds the number of layers {num_layers}")
    if mode == "group":
        start = (layer // reuse) * reuse
        members = list(range(start, min(start + reuse, num_layers)))
    else:
        start = min(max(0, layer - (reuse - 1) // 2), num_layers - reuse)
        members = list(range(start, start + reuse))
    return sorted(members, key=lambda other: (abs(other - layer), other))


def layer_candidates(layer: int, num_layers: int, experts_per_layer: int, reuse: int, mode: str) -> list[int]:
    """Global expert ids a layer's router scores, its own experts first, then by layer distance."""
    return [e for other in candidate_layers(layer, num_layers, reuse, mode)
            for e in layer_experts(other, experts_per_layer)]


def psr_visible_share(progress: float, fraction: float, schedule: str, reuse: int) -> float:
    """Share of non-local candidates visible at training ``progress`` in [0, 1]."""
    if schedule not in PSR_SCHEDULES:
        raise ValueError(f"unknown PSR schedule {schedule!r}; choose one of {', '.join(PSR_SCHEDULES)}")
    if schedule == "none" or fraction <= 0:
        return 1.0
    ramp = min(1.0, max(0.0, progress) / fraction)
    if schedule == "linear":
        return ramp
    stages = max(1, reuse - 1)
    return math.floor(ramp * stages + 1e-9) / stages


def psr_mask(num_local: int, num_candidates: int, progress: float, fraction: float, schedule: str,
             reuse: int) -> Tensor:
    """Bool (C,) mask: the local candidates always, then the first share of the non-local ones."""
    non_local = num_candidates - num_local
    visible = num_local + round(psr_visible_share(progress, fraction, schedule, reuse) * non_local)
    return torch.arange(num_candidates) < visible


def pool_balance_loss(layers: Sequence[MoEFeedForward], num_experts: int) -> Tensor:
    """Switch loss per pool over all tokens routed into it, averaged over pools.

    Layers with the same candidate set form a pool (a whole group, or a layer-local set); for sliding
    windows each layer's window is its own pool. Uses each layer's ``last_routing``.
    """
    pools: dict[tuple[int, ...], list[MoEFeedForward]] = {}
    for layer in layers:
        pools.setdefault(tuple(sorted(layer.candidates.tolist())), []).append(layer)
    losses = []
    for pool, members in pools.items():
        column = torch.full((num_experts,), -1, dtype=torch.long)
        column[list(pool)] = torch.arange(len(pool))
        probs, indices = [], []
        for layer in members:
            routed = layer.last_routing
            if routed is None:
                continue
            position = column[layer.candidates.cpu()].to(routed.probs.device)  # candidate -> pool column
            pooled = routed.probs.new_zeros(routed.probs.shape[0], len(pool))
            probs.append(pooled.index_copy(1, position, routed.probs))
            indices.append(position[routed.indices])
        if probs:
            losses.append(switch_load_balancing_loss(torch.cat(probs), torch.cat(indices), len(pool)))
    return torch.stack(losses).mean() if losses else torch.zeros(())
