"""MxMoE bit allocation: choose a bit width per linear block by a mixed-integer program (HiGHS through
``scipy.optimize.milp``) under an average-bits budget.

Objective: ``r * accuracy + (1 - r) * cost``, each normalised by its value with every block at its
cheapest-to-worst candidate sum, where accuracy is the summed sensitivity (``sensitivity.py``: output error
weighted by activation frequency) and cost the modelled kernel time (``CostModel``). ``r`` is the
accuracy/performance weight (``sweep`` walks it). Tied blocks (one ``tie`` key, e.g. an expert's gate and
up projections, or a whole expert at expert granularity) share one decision.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .blocks import LinearBlock, average_bits, tie_units


@dataclass
class CostModel:
    """Roofline time of one block in a forward pass of ``tokens`` tokens: an expert is paid for only when
    at least one token reaches it (probability 1 - (1 - frequency)^tokens), then costs the larger of its
    matmul time and the time to read its packed weights (plus a dequantisation cost per weight). The
    default, one token (decoding), is memory-bound: the expected weight bytes read per token, so rarely
    used experts are cheap to keep wide, the opposite of what accuracy asks for."""

    tokens: int = 1
    flops_per_s: float = 100e12
    bytes_per_s: float = 2e12
    dequant_flops_per_weight: float = 4.0
    group_size: int = 128

    def block_cost(self, block: LinearBlock, bits: int) -> float:
        rows = block.frequency * self.tokens
        hit = 1.0 - (1.0 - min(block.frequency, 1.0)) ** self.tokens
        flops = 2 * rows * block.params + self.dequant_flops_per_weight * block.params
        memory = block.params * bits / 8 + block.params / self.group_size * 8  # fp32 scale and zero per group
        return hit * max(flops / self.flops_per_s, memory / self.bytes_per_s)


@dataclass
class Allocation:
    bits: dict[str, int]
    average_bits: float
    accuracy: float  # summed sensitivity of the chosen widths
    cost: float  # summed modelled time
    weight: float  # r


def expert_ties(blocks: list[LinearBlock]) -> list[LinearBlock]:
    """Expert granularity: every linear block of one expert shares a width (other blocks keep their ties)."""
    return [LinearBlock(**{**b.__dict__, "tie": f"expert{b.expert}" if b.expert is not None else b.tie})
            for b in blocks]


def _objective_terms(units: list[list[LinearBlock]], table: dict[str, dict[int, float]], candidates: list[int],
                     cost_model: CostModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(units, candidates) arrays of summed sensitivity, summed cost, and bits x params."""
    acc = np.array([[sum(table[b.name][c] for b in unit) for c in candidates] for unit in units])
    cost = np.array([[sum(cost_model.block_cost(b, c) for b in unit) for c in candidates] for unit in units])
    size = np.array([[c * sum(b.params for b in unit) for c in candidates] for unit in units], dtype=float)
    return acc, cost, size


def _scores(acc: np.ndarray, cost: np.ndarray, weight: float) -> np.ndarray:
    norm = lambda m: m / max(float(m.max(axis=1).sum()), 1e-300)  # noqa: E731
    return weight * norm(acc) + (1 - weight) * norm(cost)


def _result(units, choice: list[int], candidates, acc, cost, blocks, weight) -> Allocation:
    bits = {b.name: candidates[c] for unit, c in zip(units, choice, strict=True) for b in unit}
    rows = range(len(units))
    return Allocation(bits, average_bits(blocks, bits), float(sum(acc[u, choice[u]] for u in rows)),
                      float(sum(cost[u, choice[u]] for u in rows)), weight)


def allocate(blocks: list[LinearBlock], table: dict[str, dict[int, float]], candidates: list[int], budget: float,
             weight: float = 1.0, cost_model: CostModel | None = None) -> Allocation:
    """The MILP's optimum: one width per tie unit, parameter-weighted mean width <= ``budget``."""
    candidates = sorted(candidates)
    units = tie_units(blocks)
    acc, cost, size = _objective_terms(units, table, candidates, cost_model or CostModel())
    n_units, n_cand = acc.shape
    one_each = np.kron(np.eye(n_units), np.ones(n_cand))
    budget_row = size.reshape(1, -1)
    total = sum(b.params for b in blocks)
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(budget_row, -np.inf, budget * total)]
    res = milp(_scores(acc, cost, weight).reshape(-1), constraints=constraints,
               integrality=np.ones(n_units * n_cand), bounds=Bounds(0, 1))
    if not res.success:
        raise ValueError(f"no allocation of {candidates} bits meets an average of {budget} bits ({res.message})")
    choice = [int(np.argmax(row)) for row in res.x.reshape(n_units, n_cand)]
    return _result(units, choice, candidates, acc, cost, blocks, weight)


def allocate_brute_force(blocks: list[LinearBlock], table: dict[str, dict[int, float]], candidates: list[int],
                         budget: float, weight: float = 1.0, cost_model: CostModel | None = None) -> Allocation:
    """Exhaustive search over every combination (tiny instances only: the reference for ``allocate``)."""
    candidates = sorted(candidates)
    units = tie_units(blocks)
    acc, cost, size = _objective_terms(units, table, candidates, cost_model or CostModel())
    scores, limit = _scores(acc, cost, weight), budget * sum(b.params for b in blocks) * (1 + 1e-12)
    best, best_score = None, np.inf
    for choice in itertools.product(range(len(candidates)), repeat=len(units)):
        rows = range(len(units))
        if sum(size[u, choice[u]] for u in rows) <= limit:
            score = sum(scores[u, choice[u]] for u in rows)
            if score < best_score:
                best, best_score = list(choice), score
    if best is None:
        raise ValueError(f"no allocation meets an average of {budget} bits")
    return _result(units, best, candidates, acc, cost, blocks, weight)


def sweep(blocks: list[LinearBlock], table: dict[str, dict[int, float]], candidates: list[int], budget: float,
          weights: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5), cost_model: CostModel | None = None) -> list[Allocation]:
    """One allocation per accuracy/performance weight r (1: accuracy only)."""
    return [allocate(blocks, table, candidates, budget, r, cost_model) for r in weights]
