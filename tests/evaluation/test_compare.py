"""`sbmoe compare`: TREC run files from any tool, scored against a qrels file, tested against a baseline
with the same p-values as the API; seed groups; bad input is one line naming the file and line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scipy import stats
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.evaluation.compare import read_qrels_file, run_names
from sbmoe.evaluation.metrics import evaluate_run, per_query_table
from sbmoe.evaluation.significance import compare_to_baseline
from sbmoe.runs import read_trec_run

QUERIES = [f"q{i}" for i in range(30)]


def write_run(path: Path, good: float, seed: int, skip: tuple[str, ...] = ()) -> Path:
    """Ten hits per query; the relevant document d{q}-rel lands at rank 1 with probability ``good``."""
    rng = random.Random(seed)
    lines = []
    for q in QUERIES:
        if q in skip:
            continue
        docs = [f"{q}-d{j}" for j in range(9)]
        docs.insert(0 if rng.random() < good else rng.randint(1, 9), f"{q}-rel")
        lines += [f"{q} Q0 {d} {r} {10 - r:.1f} tool" for r, d in enumerate(docs, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{q}-rel\t1\n" for q in QUERIES))
    return {"qrels": qrels, "a": write_run(tmp_path / "bm25.trec", 0.2, 1),
            "b": write_run(tmp_path / "dense.trec", 0.9, 2, skip=("q5",))}


def invoke(*args: object):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_compare_gives_the_api_p_values(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(files["a"], files["b"], "--qrels", files["qrels"], "--metrics", "nDCG@10,RR@10",
                    "--output-dir", out)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compare.json").read_text())
    qrels = read_qrels_file(files["qrels"])
    tables = {name: {"qrels": per_query_table(qrels, read_trec_run(files[key]), ["nDCG@10", "RR@10"])}
              for name, key in (("bm25", "a"), ("dense", "b"))}
    api = compare_to_baseline(tables)
    assert saved["significance"]["baseline"] == "bm25"
    assert len(saved["significance"]["comparisons"]) == 2
    for c in saved["significance"]["comparisons"]:
        expected = api.comparison(c["system"], c["dataset"], c["metric"])
        assert c["p_values"] == expected.p_values and c["p_corrected"] == expected.p_corrected
    # q5 is missing from the dense run: it scores 0 there, and the t-test is scipy's on those values
    dense, bm25 = tables["dense"]["qrels"]["nDCG@10"], tables["bm25"]["qrels"]["nDCG@10"]
    assert dense["q5"] == 0.0
    ndcg = next(c for c in saved["significance"]["comparisons"] if c["metric"] == "nDCG@10")
    assert abs(ndcg["p_values"]["t"] - stats.ttest_rel([dense[q] for q in sorted(qrels)],
                                                       [bm25[q] for q in sorted(qrels)]).pvalue) < 1e-9
    # table means are ir-measures' means over the judged queries
    record = next(r for r in saved["records"] if r["system"] == "dense")
    assert record["metrics"]["nDCG@10"] == pytest.approx(
        evaluate_run(qrels, read_trec_run(files["b"]), ["nDCG@10"])["nDCG@10"], abs=1e-12)
    # per-query TSV: one row per system, query and metric
    rows = (out / "compare.per_query.tsv").read_text().splitlines()
    assert rows[0] == "system\tdataset\tquery\tmetric\tvalue"
    assert len(rows) == 1 + 2 * 30 * 2
    assert "dense\tqrels\tq5\tnDCG@10\t0.0" in rows
    # printed and markdown tables carry the marks and a legend
    assert "Holm-corrected over 2 comparisons" in result.output
    markdown = (out / "compare.md").read_text()
    assert "| qrels | nDCG@10 | RR@10 |" in markdown and "## Significance" in markdown
    mark = "".join(m for t, m in (("t", "†"), ("randomization", "‡")) if ndcg["significant"][t])
    assert mark, "the fixture should make dense significantly better on nDCG@10"
    assert f"| dense | {record['metrics']['nDCG@10']:.4f}{mark} |" in markdown
    assert f"| bm25 | {saved['records'][0]['metrics']['nDCG@10']:.4f} |" in markdown
    provenance = saved["provenance"]
    assert provenance["runs"]["dense"][0]["sha256"] and provenance["datasets"]["qrels"]["sha256"]["qrels.tsv"]
    assert provenance["command"] and "scipy" in provenance["packages"]


def test_compare_seed_groups_from_json(files: dict[str, Path], tmp_path: Path) -> None:
    seeds = [write_run(tmp_path / f"seed{s}.trec", 0.8, 10 + s) for s in range(3)]
    mapping = tmp_path / "systems.json"
    mapping.write_text(json.dumps({"trained": [p.name for p in seeds]}))
    result = invoke(f"base={files['a']}", "--qrels", files["qrels"], "--metrics", "nDCG@10", "--systems-from",
                    mapping, "--test", "t", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["significance"]["seeds"] == {"base": 1, "trained": 3}
    summary = next(s for s in saved["significance"]["summaries"] if s["system"] == "trained")
    qrels = read_qrels_file(files["qrels"])
    seed_means = [evaluate_run(qrels, read_trec_run(p), ["nDCG@10"])["nDCG@10"] for p in seeds]
    assert summary["mean"] == pytest.approx(sum(seed_means) / 3)
    assert f"{summary['mean']:.4f} ± {summary['std']:.4f}" in result.output
    assert "averaged over the seeds" in result.output


def test_compare_fuse_rrf_and_named_runs(files: dict[str, Path]) -> None:
    result = invoke(f"x={files['a']}", f"y={files['b']}", "--qrels", files["qrels"], "--metrics", "nDCG@10",
                    "--fuse", "rrf", "--baseline", "y", "--correction", "bonferroni")
    assert result.exit_code == 0, result.output
    assert "rrf" in result.output and "Bonferroni-corrected over 2 comparisons" in result.output


def test_run_names_fall_back_to_folders(tmp_path: Path) -> None:
    paths = [tmp_path / s / "scifact.test.run" for s in ("minilm", "bm25")]
    assert list(run_names([str(p) for p in paths])) == ["minilm", "bm25"]
    assert list(run_names([str(tmp_path / "a.trec"), f"mine={tmp_path / 'b.trec'}"])) == ["a", "mine"]


@pytest.mark.parametrize(("line", "message"), [
    ("q1 Q0 d1 1 0.5", "expected 6 columns in a TREC run, got 5"),
    ("q1 Q0 d1 1 high tool", "score 'high' is not a number"),
])
def test_malformed_run_line_is_one_line(files: dict[str, Path], tmp_path: Path, line: str, message: str) -> None:
    bad = tmp_path / "bad.trec"
    bad.write_text("q0 Q0 q0-rel 1 1.0 tool\n" + line + "\n")
    result = invoke(files["a"], bad, "--qrels", files["qrels"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {bad}:2: {message}"]
    assert "Traceback" not in result.output


def test_bad_qrels_baseline_and_test_are_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    qrels = tmp_path / "bad-qrels.tsv"
    qrels.write_text("q1\td1\t1\nq2\td2\tyes\n")
    cases = [((files["a"], "--qrels", qrels), f"error: {qrels}:2: relevance 'yes' is not a number"),
             ((files["a"], files["b"], "--qrels", files["qrels"], "--baseline", "nope"),
              "error: --baseline 'nope' is not one of the systems: bm25, dense"),
             ((files["a"], files["b"], "--qrels", files["qrels"], "--test", "wilcoxon"),
              "error: unknown test 'wilcoxon'; choose one of t, randomization, both")]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [message]


def test_compare_seed_groups_from_a_folder(files: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "systems"
    for name, good in (("old", 0.3), ("new", 0.9)):
        (root / name).mkdir(parents=True)
        for s in range(2):
            write_run(root / name / f"s{s}.trec", good, 20 + s + (10 if name == "new" else 0))
    result = invoke("--qrels", files["qrels"], "--metrics", "nDCG@10", "--systems-from", root, "--baseline", "old")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("new ") and "±" in line for line in lines)
    assert any(line.startswith("new ") and "nDCG@10" in line for line in lines)  # the tests table row
