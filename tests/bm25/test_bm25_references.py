"""`sbmoe eval --bm25` with no flags reproduces the reference BM25 figures to 0.001: Cranfield and CACM
(shared data README), ArguAna (pyserini's BEIR regression 0.3970, BEIR's published 0.397)."""

from __future__ import annotations

import pytest

from sbmoe.evaluation.benchmark import evaluate_systems
from sbmoe.evaluation.systems import SystemsConfig, build_systems

pytestmark = pytest.mark.bm25


@pytest.mark.parametrize(("name", "ndcg10", "r100"), [("cranfield", 0.3510, 0.7224), ("cacm", 0.4715, 0.6405),
                                                      ("arguana", 0.3970, 0.9324)])
def test_lucene_bm25_matches_reference(name: str, ndcg10: float, r100: float) -> None:
    systems = build_systems(SystemsConfig(models=[], bm25=True, show_progress=False))
    report = evaluate_systems(systems, [name], ["nDCG@10", "R@100"])
    assert report.records[0].metrics["nDCG@10"] == pytest.approx(ndcg10, abs=0.001)
    assert report.records[0].metrics["R@100"] == pytest.approx(r100, abs=0.001)
