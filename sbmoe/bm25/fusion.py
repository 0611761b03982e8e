"""Hybrid retrieval: fuse two (or more) runs by reciprocal rank or by a convex mix of normalized scores."""

from __future__ import annotations

from collections.abc import Sequence

from ..runs import Run, ranked

FUSIONS = ("rrf", "convex")


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, depth: int | None = None) -> Run:
    """Cormack et al. 2009: score(d) = sum over runs of 1 / (k + rank of d), ranks from 1."""
    fused: Run = {}
    for run in runs:
        for qid, hits in run.items():
            scores = fused.setdefault(qid, {})
            for rank, (doc_id, _) in enumerate(ranked(hits), start=1):
                scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    return _top(fused, depth)


def min_max(hits: dict[str, float]) -> dict[str, float]:
    """Scores mapped to [0, 1] per query; a query whose hits all score the same maps them to 1."""
    if not hits:
        return {}
    low, high = min(hits.values()), max(hits.values())
    if high == low:
        return dict.fromkeys(hits, 1.0)
    return {doc_id: (score - low) / (high - low) for doc_id, score in hits.items()}


def convex_combination(first: Run, second: Run, alpha: float = 0.5, depth: int | None = None) -> Run:
    """alpha * minmax(first) + (1 - alpha) * minmax(second); a document missing from a run scores 0 there."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    fused: Run = {}
    for qid in dict.fromkeys([*first, *second]):
        a, b = min_max(first.get(qid, {})), min_max(second.get(qid, {}))
        fused[qid] = {d: alpha * a.get(d, 0.0) + (1 - alpha) * b.get(d, 0.0) for d in dict.fromkeys([*a, *b])}
    return _top(fused, depth)


def fuse(first: Run, second: Run, method: str = "rrf", alpha: float = 0.5, depth: int | None = None) -> Run:
    if method == "rrf":
        return reciprocal_rank_fusion([first, second], depth=depth)
    if method == "convex":
        return convex_combination(first, second, alpha, depth)
    raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")


def _top(run: Run, depth: int | None) -> Run:
    return {qid: dict(ranked(hits)[:depth] if depth else ranked(hits)) for qid, hits in run.items()}
