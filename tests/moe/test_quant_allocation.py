"""MxMoE's integer program (budget, optimality against brute force and uniform, ties, the r sweep) and
the PTQ-benchmark heuristics at matched average bits."""

from __future__ import annotations

import random

import pytest
import torch

from sbmoe.moe.quant import (
    HEURISTICS,
    CostModel,
    LinearBlock,
    allocate,
    allocate_brute_force,
    average_bits,
    expert_ties,
    heuristic_allocation,
    outlier_score,
    sweep,
)
from sbmoe.moe.quant.heuristics import two_levels

CANDIDATES = [2, 3, 4, 8]


def synthetic_model(seed: int = 0) -> tuple[list[LinearBlock], dict[str, dict[int, float]]]:
    """Two layers: attention (two blocks) and 4 experts of w_in (gate+up, 2x the params) and w_out, with
    errors that fall 4x per extra bit and block-specific sensitivities spanning two orders of magnitude."""
    rng = random.Random(seed)
    blocks, table = [], {}
    for layer in range(2):
        for part in ("qkv", "proj"):
            blocks.append(LinearBlock(f"l{layer}.{part}", "attention", layer, 3000 if part == "qkv" else 1000))
        for e in range(4):
            for part, size in (("w_in", 2000), ("w_out", 1000)):
                blocks.append(LinearBlock(f"l{layer}.e{e}.{part}", "shared" if e == 0 else "routed", layer, size,
                                          expert=layer * 4 + e, frequency=rng.uniform(0.05, 0.6)))
    for block in blocks:
        sensitivity = 10 ** rng.uniform(-1, 1) * block.frequency
        table[block.name] = {b: sensitivity * 4.0 ** -b for b in range(1, 9)}
    return blocks, table


def total_error(blocks, table, bits) -> float:
    return sum(table[b.name][bits[b.name]] for b in blocks)


@pytest.mark.parametrize("budget", [2.25, 2.5, 3.0, 4.0])
def test_milp_respects_the_budget_and_beats_uniform(budget: float) -> None:
    blocks, table = synthetic_model()
    result = allocate(blocks, table, CANDIDATES, budget)
    assert result.average_bits <= budget + 1e-9
    assert set(result.bits.values()) <= set(CANDIDATES)
    uniform = {b.name: int(budget) for b in blocks}  # the best uniform width within the budget
    assert result.accuracy <= total_error(blocks, table, uniform) + 1e-12
    assert result.accuracy == pytest.approx(total_error(blocks, table, result.bits))
    if budget == 3.0:  # sensitivities differ, so moving bits between blocks must strictly help
        assert result.accuracy < 0.9 * total_error(blocks, table, uniform)


@pytest.mark.parametrize(("budget", "weight"), [(2.5, 1.0), (3.0, 0.6), (2.25, 0.3)])
def test_milp_equals_brute_force_on_a_tiny_instance(budget: float, weight: float) -> None:
    blocks, table = synthetic_model(seed=3)
    tiny = [b for b in blocks if b.layer == 0][:5]
    tiny[1] = LinearBlock(**{**tiny[1].__dict__, "tie": "pair"})
    tiny[2] = LinearBlock(**{**tiny[2].__dict__, "tie": "pair"})
    cost = CostModel(tokens=4)
    ours = allocate(tiny, table, [2, 3, 4], budget, weight, cost)
    reference = allocate_brute_force(tiny, table, [2, 3, 4], budget, weight, cost)
    score = lambda a: weight * a.accuracy / reference_norms[0] + (1 - weight) * a.cost / reference_norms[1]  # noqa: E731
    reference_norms = (sum(max(table[b.name][c] for c in (2, 3, 4)) for b in tiny),
                       sum(max(cost.block_cost(b, c) for c in (2, 3, 4)) for b in tiny))
    assert score(ours) == pytest.approx(score(reference), rel=1e-9)
    assert ours.bits[tiny[1].name] == ours.bits[tiny[2].name]


def test_expert_granularity_ties_experts_and_is_no_better_than_linear() -> None:
    blocks, table = synthetic_model(seed=1)
    linear = allocate(blocks, table, CANDIDATES, 2.5)
    expert = allocate(expert_ties(blocks), table, CANDIDATES, 2.5)
    for block in blocks:
        if block.expert is not None:
            siblings = [b for b in blocks if b.expert == block.expert]
            assert len({expert.bits[b.name] for b in siblings}) == 1
    assert linear.accuracy <= expert.accuracy + 1e-12


def test_sweep_trades_accuracy_for_modelled_cost() -> None:
    blocks, table = synthetic_model(seed=2)
    results = sweep(blocks, table, CANDIDATES, 3.0, weights=(1.0, 0.5, 0.0))
    assert all(r.average_bits <= 3.0 + 1e-9 for r in results)
    assert results[0].accuracy <= results[1].accuracy <= results[2].accuracy
    assert results[0].cost >= results[1].cost >= results[2].cost


def test_infeasible_budget_is_a_value_error() -> None:
    blocks, table = synthetic_model()
    with pytest.raises(ValueError, match="no allocation"):
        allocate(blocks, table, [2, 3], 1.5)


@pytest.mark.parametrize("budget", [2.25, 2.5, 3.0, 4.0])
@pytest.mark.parametrize("name", HEURISTICS)
def test_heuristics_allocate_at_the_matched_average(name: str, budget: float) -> None:
    blocks, _ = synthetic_model()
    weights = {b.name: torch.randn(10, b.params // 10, generator=torch.Generator().manual_seed(i))
               for i, b in enumerate(blocks)}
    bits = heuristic_allocation(name, blocks, budget, **({"weights": weights} if name == "outlier" else {}),
                                **({"block_scores": {0: 0.2, 1: 0.9}} if name == "block-score" else {}))
    avg, largest = average_bits(blocks, bits), max(b.params for b in blocks) / sum(b.params for b in blocks)
    low, high = two_levels(budget)
    assert budget - (high - low) * largest <= avg <= budget + 1e-9  # within one block's raise of it
    assert len(set(bits.values())) == 2


def test_heuristics_raise_the_blocks_they_favour() -> None:
    blocks, _ = synthetic_model()
    assert two_levels(2.25) == (2, 3) and two_levels(2.5) == (2, 3) and two_levels(3.0) == (2, 4)
    attention = heuristic_allocation("attention", blocks, 2.5)
    assert all(attention[b.name] == 3 for b in blocks if b.kind == "attention")
    shared = heuristic_allocation("shared", blocks, 2.5)
    assert all(shared[b.name] == 3 for b in blocks if b.kind == "shared")
    first = heuristic_allocation("first-k", blocks, 3.0)
    assert all(first[b.name] == 4 for b in blocks if b.layer == 0)
    assert all(first[b.name] == 2 for b in blocks if b.layer == 1)
    scored = heuristic_allocation("block-score", blocks, 3.0, block_scores={0: 0.1, 1: 0.7})
    assert all(scored[b.name] == 4 for b in blocks if b.layer == 1)
    frequency = heuristic_allocation("frequency", blocks, 3.0)
    assert all(frequency[b.name] == 4 for b in blocks if b.kind == "attention")  # used by every token
    experts = sorted((b for b in blocks if b.expert is not None), key=lambda b: -b.frequency)
    assert frequency[experts[0].name] == 4 and frequency[experts[-1].name] == 2
    raised = [b.frequency for b in experts if frequency[b.name] == 4]
    kept = [b.frequency for b in experts if frequency[b.name] == 2]
    assert sum(raised) / len(raised) > sum(kept) / len(kept)
    assert heuristic_allocation("random", blocks, 3.0, seed=1) != heuristic_allocation("random", blocks, 3.0, seed=2)


def test_outlier_score_is_max_over_mean_magnitude() -> None:
    assert outlier_score(torch.tensor([[1.0, -1.0], [1.0, -5.0]])) == pytest.approx(5 / 2)
