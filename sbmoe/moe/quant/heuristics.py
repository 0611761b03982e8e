"""Structure-aware bit allocation heuristics of the MoE post-training-quantisation benchmark ("Examining
Post-Training Quantization for Mixture-of-Experts"), all at a matched average-bits budget.

Every heuristic is a priority over blocks: blocks start at a low width and, in decreasing priority, are
raised to a high width while the parameter-weighted average stays within the budget (``fill``). The two
widths straddle the budget: the whole widths around a fractional budget (2.25 -> 2/3, a quarter of the
weights raised), one below and one above a whole one (3 -> 2/4, half of them raised).
Priorities: attention before experts; shared before routed experts; more frequently used blocks first; the
first transformer blocks first; the linear-weight outlier score (max |W| / mean |W|) high first; the MoE
block score (how much a layer's MoE changes its input, ``block_scores``) high first; and a random control.
"""

from __future__ import annotations

import math
import random

from torch import Tensor

from .blocks import LinearBlock, tie_units

HEURISTICS = ("attention", "shared", "frequency", "first-k", "outlier", "block-score", "random")


def two_levels(budget: float) -> tuple[int, int]:
    """(low, high) widths of the heuristics at ``budget``."""
    if budget == int(budget):
        return max(1, int(budget) - 1), min(8, int(budget) + 1)
    return math.floor(budget), math.floor(budget) + 1


def fill(blocks: list[LinearBlock], priority: dict[str, float], budget: float) -> dict[str, int]:
    """Greedy: every block at the low width, then raise blocks in decreasing priority (ties: list order)
    whenever the raise keeps the parameter-weighted average within ``budget``; tied blocks rise together."""
    low, high = two_levels(budget)
    bits = {b.name: low for b in blocks}
    total = sum(b.params for b in blocks)
    spare = budget * total - low * total
    ranked = sorted(tie_units(blocks), key=lambda unit: -max(priority[b.name] for b in unit))
    for unit in ranked:
        extra = (high - low) * sum(b.params for b in unit)
        if extra <= spare * (1 + 1e-12):
            spare -= extra
            bits.update({b.name: high for b in unit})
    return bits


def outlier_score(weight: Tensor) -> float:
    """max |W| / mean |W|: heavy-tailed weights lose most to a uniform grid."""
    magnitude = weight.detach().abs().float()
    return float(magnitude.max() / magnitude.mean().clamp_min(1e-12))


def priorities(name: str, blocks: list[LinearBlock], weights: dict[str, Tensor] | None = None,
               block_scores: dict[int, float] | None = None, seed: int = 0) -> dict[str, float]:
    """The priority of each block under heuristic ``name`` (higher: raised first)."""
    if name == "attention":
        return {b.name: float(b.kind == "attention") for b in blocks}
    if name == "shared":
        return {b.name: float(b.kind == "shared") for b in blocks}
    if name == "frequency":
        return {b.name: b.frequency for b in blocks}
    if name == "first-k":
        return {b.name: -float(b.layer) for b in blocks}
    if name == "outlier":
        if weights is None:
            raise ValueError("the outlier heuristic needs the weights")
        return {b.name: outlier_score(weights[b.name]) for b in blocks}
    if name == "block-score":
        if block_scores is None:
            raise ValueError("the block-score heuristic needs per-layer MoE block scores")
        return {b.name: block_scores[b.layer] for b in blocks}
    if name == "random":
        rng = random.Random(seed)
        return {b.name: rng.random() for b in blocks}
    raise ValueError(f"unknown heuristic {name!r}; choose one of {', '.join(HEURISTICS)}")


def heuristic_allocation(name: str, blocks: list[LinearBlock], budget: float, **scores) -> dict[str, int]:
    """Bits per block under heuristic ``name`` at ``budget`` average bits (``scores``: see ``priorities``)."""
    return fill(blocks, priorities(name, blocks, **scores), budget)
