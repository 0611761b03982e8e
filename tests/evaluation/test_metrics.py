"""ir-measures figures against nDCG, recall and reciprocal rank computed by hand; the leaderboard table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sbmoe.evaluation.metrics import MetricError, evaluate_run, retrieval_depth
from sbmoe.evaluation.report import EvalRecord, EvalReport, format_leaderboard, format_metric_table
from sbmoe.runs import read_trec_run, write_trec_run

QRELS = {"q1": {"d1": 2, "d3": 1, "d9": 1}, "q2": {"d5": 1}}
RUN = {
    "q1": {"d3": 0.9, "d2": 0.8, "d1": 0.7, "d4": 0.1},  # ranks: d3 (1), d2 (0), d1 (2), d4 (0)
    "q2": {"d6": 0.5, "d7": 0.4},  # no relevant document retrieved
}


def hand_ndcg(gains: list[int], ideal: list[int], k: int) -> float:
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(ideal, reverse=True)[:k]))
    return dcg / idcg


def test_ndcg_recall_rr_equal_hand_computation() -> None:
    got = evaluate_run(QRELS, RUN, ["nDCG@10", "nDCG@2", "R@100", "RR@10"])
    q1_ndcg10 = hand_ndcg([1, 0, 2, 0], [2, 1, 1], 10)
    q1_ndcg2 = hand_ndcg([1, 0], [2, 1, 1], 2)
    assert got["nDCG@10"] == pytest.approx((q1_ndcg10 + 0.0) / 2, abs=1e-9)
    assert got["nDCG@2"] == pytest.approx((q1_ndcg2 + 0.0) / 2, abs=1e-9)
    assert got["R@100"] == pytest.approx((2 / 3 + 0.0) / 2, abs=1e-9)
    assert got["RR@10"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-9)


def test_unknown_metric_is_refused_by_name() -> None:
    with pytest.raises(MetricError, match="unknown metric 'nDGC@10'"):
        evaluate_run(QRELS, RUN, ["nDGC@10"])


def test_retrieval_depth_covers_every_cutoff() -> None:
    assert retrieval_depth(["nDCG@10", "R@100"]) == 100
    assert retrieval_depth(["nDCG@10", "R@1000"]) == 1000


def test_trec_run_round_trip_orders_by_score(tmp_path: Path) -> None:
    path = write_trec_run(RUN, tmp_path / "run.trec", tag="toy")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 0.900000 toy" and lines[2].split()[2:4] == ["d1", "3"]
    assert all(len(line.split()) == 6 for line in lines)
    assert read_trec_run(path) == RUN


def test_tables_have_a_mean_row() -> None:
    report = EvalReport(metrics=["nDCG@10"], records=[
        EvalRecord("a", "x", "test", {"nDCG@10": 0.5}, 1, 0.0),
        EvalRecord("a", "y", "test", {"nDCG@10": 0.7}, 1, 0.0),
        EvalRecord("b", "x", "test", {"nDCG@10": 0.1}, 1, 0.0),
        EvalRecord("b", "y", "test", {"nDCG@10": 0.3}, 1, 0.0),
    ])
    table = format_metric_table(report, "a").splitlines()
    assert table[-1].split() == ["mean", "0.6000"]
    board = format_leaderboard(report, "nDCG@10", markdown=True).splitlines()
    assert board[0] == "| nDCG@10 | a | b |" and board[-1] == "| mean | 0.6000 | 0.2000 |"
