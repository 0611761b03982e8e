"""Paired significance tests against independent references: scipy's t-test, exact enumeration of sign
flips, hand-computed Holm and Bonferroni values, and the degenerate cases a leaderboard must get right."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from sbmoe.evaluation.significance import (
    SignificanceConfig,
    bonferroni,
    compare_to_baseline,
    correct,
    holm,
    paired_randomization_test,
)


def scores(n: int, shift: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"q{i:02d}": float(v) for i, v in enumerate(np.clip(rng.random(n) + shift, 0, 1))}


def exact_sign_flip_p(a: list[float], b: list[float]) -> float:
    """All 2^n sign patterns of the differences: share whose |mean| reaches the observed |mean|."""
    diffs = np.array(a) - np.array(b)
    observed = abs(diffs.mean())
    signs = np.array(list(itertools.product((1, -1), repeat=len(diffs))))
    return float(np.mean(np.abs(signs @ diffs / len(diffs)) >= observed - 1e-12))


def test_t_test_equals_scipy_ttest_rel() -> None:
    a, b = scores(40, 0.05, 1), scores(40, 0.0, 2)
    report = compare_to_baseline({"base": b, "new": a}, test="t", correction="none")
    comparison = report.comparison("new", "all", "value")
    qids = sorted(a)
    reference = stats.ttest_rel([a[q] for q in qids], [b[q] for q in qids]).pvalue
    assert abs(comparison.p_values["t"] - reference) < 1e-9
    assert comparison.p_corrected["t"] == comparison.p_values["t"]
    assert comparison.difference == pytest.approx(statistics.mean(a.values()) - statistics.mean(b.values()))


def test_randomization_equals_exact_enumeration() -> None:
    a, b = scores(10, 0.15, 3), scores(10, 0.0, 4)
    qids = sorted(a)
    x, y = [a[q] for q in qids], [b[q] for q in qids]
    exact = exact_sign_flip_p(x, y)
    assert 0.0 < exact < 1.0
    # 2^10 <= 10,000 draws: every flip is enumerated
    assert paired_randomization_test(x, y) == pytest.approx(exact, abs=1e-12)
    # 500 random flips: within Monte-Carlo error of the exact value
    sampled = paired_randomization_test(x, y, permutations=500, seed=7)
    assert abs(sampled - exact) <= 4 * math.sqrt(exact * (1 - exact) / 500) + 1 / 501


def test_randomization_monte_carlo_on_16_queries_matches_exact() -> None:
    a, b = scores(16, 0.1, 5), scores(16, 0.0, 6)
    qids = sorted(a)
    x, y = [a[q] for q in qids], [b[q] for q in qids]
    exact = exact_sign_flip_p(x, y)  # 2^16 patterns, more than the 10,000 random flips
    report = compare_to_baseline({"b": b, "a": a}, test="randomization", correction="none")
    sampled = report.comparison("a", "all", "value").p_values["randomization"]
    assert abs(sampled - exact) <= 4 * math.sqrt(exact * (1 - exact) / 10000) + 1 / 10001


def test_holm_and_bonferroni_hand_computed() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert bonferroni(p) == pytest.approx([0.04, 0.16, 0.12, 0.02])
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone: 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert correct(p, "none") == p
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_report_corrects_over_systems_datasets_metrics() -> None:
    base = {d: {m: scores(30, 0.0, i) for i, m in enumerate(["nDCG@10", "R@100"])} for d in ["x", "y"]}
    systems = {"base": base,
               "good": {d: {m: {q: min(1.0, v + 0.2) for q, v in t.items()} for m, t in ms.items()}
                        for d, ms in base.items()},
               "noise": {d: {m: scores(30, 0.0, 100 + i) for i, m in enumerate(ms)} for d, ms in base.items()}}
    for method, reference in (("holm", holm), ("bonferroni", bonferroni)):
        report = compare_to_baseline(systems, correction=method)
        assert len(report.comparisons) == 2 * 2 * 2  # systems x datasets x metrics
        for test in ("t", "randomization"):
            raw = [c.p_values[test] for c in report.comparisons]
            assert [c.p_corrected[test] for c in report.comparisons] == pytest.approx(reference(raw))
        assert report.mark("good", "x", "nDCG@10") == "†‡"
        assert report.mark("base", "x", "nDCG@10") == ""
        assert method.capitalize() in report.legend() and "alpha = 0.05" in report.legend()


def test_system_against_itself_is_p_one_and_unmarked() -> None:
    a = scores(25, 0.0, 8)
    report = compare_to_baseline({"a": a, "same": dict(a)})
    c = report.comparison("same", "all", "value")
    assert c.p_values == {"t": 1.0, "randomization": 1.0}
    assert c.p_corrected == {"t": 1.0, "randomization": 1.0}
    assert c.ci95 == (0.0, 0.0) and c.difference == 0.0
    assert report.mark("same", "all", "value") == ""


def test_one_query_difference_is_not_significant() -> None:
    a = scores(30, 0.0, 9)
    b = {**a, "q00": a["q00"] + 0.9 if a["q00"] < 0.1 else a["q00"] - 0.9 if a["q00"] > 0.9 else 1.0}
    report = compare_to_baseline({"a": a, "b": b})
    c = report.comparison("b", "all", "value")
    assert c.p_values["randomization"] == 1.0  # every flip gives the same |mean|
    assert c.p_values["t"] > 0.3  # t = 1 exactly for a single non-zero difference
    assert report.mark("b", "all", "value") == ""


def test_missing_query_counts_as_zero() -> None:
    a = scores(15, 0.2, 10)
    b = scores(15, 0.0, 11)
    del b["q03"]
    report = compare_to_baseline({"a": a, "b": b}, test="t")
    explicit = compare_to_baseline({"a": a, "b": {**b, "q03": 0.0}}, test="t")
    assert report.comparison("b", "all", "value").p_values == explicit.comparison("b", "all", "value").p_values
    assert report.summary("b", "all", "value").queries == 15
    assert report.summary("b", "all", "value").mean == pytest.approx(sum(b.values()) / 15)
    # a judged query no system retrieved for: given through ``queries``, it scores 0 for both
    padded = compare_to_baseline({"a": a, "b": b}, test="t", queries={"all": [*a, "q99"]})
    assert padded.summary("a", "all", "value").queries == 16


def test_seed_groups_mean_std_and_tests_on_seed_means() -> None:
    seeds_a = [scores(20, 0.1, s) for s in (20, 21, 22)]
    seeds_b = [scores(20, 0.0, s) for s in (30, 31)]
    report = compare_to_baseline({"b": seeds_b, "a": seeds_a}, test="t")
    summary = report.summary("a", "all", "value")
    seed_means = [statistics.mean(s.values()) for s in seeds_a]
    assert summary.mean == pytest.approx(statistics.mean(seed_means))
    assert summary.std == pytest.approx(statistics.stdev(seed_means))
    assert summary.seeds == 3 and report.seeds == {"b": 2, "a": 3}
    qids = sorted(seeds_a[0])
    mean_a = [statistics.mean(s[q] for s in seeds_a) for q in qids]
    mean_b = [statistics.mean(s[q] for s in seeds_b) for q in qids]
    assert report.comparison("a", "all", "value").p_values["t"] == pytest.approx(
        stats.ttest_rel(mean_a, mean_b).pvalue, abs=1e-9)
    assert "averaged over the seeds" in report.legend()


def test_bootstrap_ci_matches_a_numpy_percentile_bootstrap() -> None:
    a, b = scores(60, 0.05, 12), scores(60, 0.0, 13)
    c = compare_to_baseline({"b": b, "a": a}).comparison("a", "all", "value")
    diffs = np.array([a[q] - b[q] for q in sorted(a)])
    rng = np.random.default_rng(99)
    means = diffs[rng.integers(0, len(diffs), size=(20000, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert c.ci95[0] < c.difference < c.ci95[1]
    assert c.ci95[0] == pytest.approx(low, abs=0.01) and c.ci95[1] == pytest.approx(high, abs=0.01)


def test_same_data_same_p_whatever_the_other_comparisons() -> None:
    a, b, extra = scores(200, 0.02, 14), scores(200, 0.0, 15), scores(200, 0.1, 16)
    alone = compare_to_baseline({"b": b, "a": a}).comparison("a", "all", "value")
    crowded = compare_to_baseline({"b": b, "x": extra, "a": a}).comparison("a", "all", "value")
    assert alone.p_values == crowded.p_values and alone.ci95 == crowded.ci95


def test_bad_input_fails_with_a_message() -> None:
    with pytest.raises(ValueError, match="baseline 'nope' is not one of the systems: a, b"):
        compare_to_baseline({"a": {"q": 1.0}, "b": {"q": 0.0}}, baseline="nope")
    with pytest.raises(ValueError, match="unknown test 'z'"):
        SignificanceConfig(test="z")
    with pytest.raises(ValueError, match="unknown correction 'fdr'"):
        SignificanceConfig(correction="fdr")
    with pytest.raises(ValueError, match="query 'q1': score 'x' is not a number"):
        compare_to_baseline({"a": {"q1": "x"}, "b": {"q1": 0.0}})
