"""ir-measures scoring of runs against qrels: metric names checked up front, means over judged queries."""

from __future__ import annotations

import re
from collections.abc import Sequence

import ir_measures

from ..runs import Run

DEFAULT_METRICS = ("nDCG@10", "R@100", "RR@10")


class MetricError(ValueError):
    """A metric name ir-measures does not know."""


def parse_metrics(names: Sequence[str]) -> list:
    """ir-measures measure objects for names such as ``nDCG@10``; a typo fails with the name."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name.strip()))
        except (NameError, ValueError, SyntaxError):
            raise MetricError(f"unknown metric {name!r} (examples: nDCG@10, R@100, RR@10, P@5, AP)") from None
    return measures


def retrieval_depth(metrics: Sequence[str], minimum: int = 100) -> int:
    """How many hits to retrieve so that every cutoff in ``metrics`` is covered (at least ``minimum``)."""
    cutoffs = [int(c) for name in metrics for c in re.findall(r"@(\d+)", name)]
    return max([minimum, *cutoffs])


def evaluate_run(qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the judged queries (a judged query missing from the run scores 0)."""
    measures = parse_metrics(metrics)
    values = ir_measures.calc_aggregate(measures, qrels, run)
    return {name: float(values[measure]) for name, measure in zip(metrics, measures, strict=True)}


def per_query(qrels: dict[str, dict[str, int]], run: Run, metric: str) -> dict[str, float]:
    """One metric for every judged query (0 for a judged query missing from the run): the input of paired
    significance tests."""
    measure = parse_metrics([metric])[0]
    values = {m.query_id: float(m.value) for m in ir_measures.iter_calc([measure], qrels, run)}
    return {qid: values.get(qid, 0.0) for qid in qrels}


def per_query_table(qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """{metric: {query: value}} for every judged query (0 when missing from the run), in one ir-measures pass:
    what ``significance`` tests and what the per-query TSV holds."""
    measures = parse_metrics(metrics)
    names = dict(zip(measures, metrics, strict=True))
    table: dict[str, dict[str, float]] = {name: dict.fromkeys(qrels, 0.0) for name in metrics}
    for m in ir_measures.iter_calc(measures, qrels, run):
        if m.query_id in qrels:
            table[names[m.measure]][m.query_id] = float(m.value)
    return table
