"""Fusion maths against hand-computed examples."""

from __future__ import annotations

import pytest

from sbmoe.bm25.fusion import convex_combination, fuse, min_max, reciprocal_rank_fusion

DENSE = {"q": {"a": 0.9, "b": 0.5, "c": 0.1}}
SPARSE = {"q": {"b": 12.0, "d": 8.0, "a": 4.0}}


def test_rrf_by_hand() -> None:
    fused = reciprocal_rank_fusion([DENSE, SPARSE], k=60)["q"]
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    assert fused == pytest.approx(expected)
    assert list(fused) == ["b", "a", "d", "c"]  # ranked by fused score


def test_convex_by_hand() -> None:
    fused = convex_combination(DENSE, SPARSE, alpha=0.25)["q"]
    dense = {"a": 1.0, "b": 0.5, "c": 0.0}  # (s - 0.1) / 0.8
    sparse = {"b": 1.0, "d": 0.5, "a": 0.0}  # (s - 4) / 8
    expected = {d: 0.25 * dense.get(d, 0.0) + 0.75 * sparse.get(d, 0.0) for d in "abcd"}
    assert fused == pytest.approx(expected)
    assert list(fused)[0] == "b"


def test_edge_cases() -> None:
    assert min_max({"x": 3.0, "y": 3.0}) == {"x": 1.0, "y": 1.0}
    assert convex_combination({"q": {"a": 1.0}}, {}, alpha=1.0) == {"q": {"a": 1.0}}
    assert list(fuse(DENSE, SPARSE, "rrf", depth=2)["q"]) == ["b", "a"]
    with pytest.raises(ValueError, match="alpha must be in"):
        convex_combination(DENSE, SPARSE, alpha=1.5)
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        fuse(DENSE, SPARSE, "max")
