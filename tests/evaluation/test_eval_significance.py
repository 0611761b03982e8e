"""`sbmoe eval` with several systems: marked leaderboard with a legend, per-query TSV, every p-value in
eval.json, provenance, and `sbmoe compare` on the written run files giving the same p-values."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.evaluation import benchmark

N_QUERIES = 30


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "text": f"document {i}"} for i in range(3 * N_QUERIES)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                for i in range(N_QUERIES)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"q{i}\td{i}\t1\n" for i in range(N_QUERIES)))
    return root


def fake_system(hit_rate: float, seed: int):
    """Ranks the relevant document first with probability ``hit_rate``, else fifth; one query gets nothing."""

    def retrieve(data: BeirDataset, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        rng = random.Random(seed)
        run = {}
        for qid in queries:
            i = int(qid[1:])
            others = [f"d{(i + j) % (3 * N_QUERIES)}" for j in range(1, 10)]
            ranked = others[:4] + [f"d{i}"] + others[4:] if rng.random() > hit_rate else [f"d{i}", *others]
            run[qid] = {d: 10.0 - r for r, d in enumerate(ranked)}
        run.pop("q7", None)  # a query this system retrieves nothing for
        return run

    return retrieve


@pytest.fixture
def fake_systems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmark, "build_systems",
                        lambda config: {"weak": fake_system(0.2, 1), "strong": fake_system(0.95, 2)})


def test_eval_marks_leaderboard_and_compare_agrees(dataset: Path, fake_systems: None, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["eval", "-d", str(dataset), "--metrics", "nDCG@10,R@100", "--output-dir",
                                      str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "eval.json").read_text())
    sig = saved["significance"]
    assert sig["baseline"] == "weak" and sig["correction"] == "holm" and sig["tests"] == ["t", "randomization"]
    ndcg = next(c for c in sig["comparisons"] if c["metric"] == "nDCG@10")
    assert ndcg["significant"] == {"t": True, "randomization": True}
    assert ndcg["ci95"][0] <= ndcg["difference"] <= ndcg["ci95"][1]
    strong = next(r for r in saved["records"] if r["system"] == "strong")
    board = (out / "leaderboard.md").read_text()
    assert "| toy | " in board and f"{strong['metrics']['nDCG@10']:.4f}†‡ |" in board
    assert "Holm-corrected over 2 comparisons" in board and "alpha = 0.05" in board
    assert "against the baseline" in result.output

    rows = (out / "eval.per_query.tsv").read_text().splitlines()
    assert rows[0] == "system\tdataset\tquery\tmetric\tvalue" and len(rows) == 1 + 2 * N_QUERIES * 2
    assert "strong\ttoy\tq7\tnDCG@10\t0.0" in rows  # retrieved nothing: 0, not missing

    provenance = saved["provenance"]
    corpus_sha = hashlib.sha256((dataset / "corpus.jsonl").read_bytes()).hexdigest()
    assert provenance["datasets"]["toy"]["sha256"]["corpus.jsonl"] == corpus_sha
    assert set(provenance["datasets"]["toy"]["sha256"]) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv"}
    assert provenance["sbmoe_version"] and provenance["command"] and "torch" in provenance["packages"]
    assert provenance["config"]["significance"]["test"] == "both"

    runs = {r["system"]: r["run_file"] for r in saved["records"]}
    compared = CliRunner().invoke(app, ["compare", runs["weak"], runs["strong"], "--qrels", str(dataset),
                                        "--metrics", "nDCG@10,R@100", "--output-dir", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    again = json.loads((tmp_path / "cmp" / "compare.json").read_text())["significance"]["comparisons"]
    assert [(c["system"], c["p_values"], c["p_corrected"], c["ci95"]) for c in again] == \
        [(c["system"], c["p_values"], c["p_corrected"], c["ci95"]) for c in sig["comparisons"]]


def test_eval_baseline_option_and_unknown_baseline(dataset: Path, fake_systems: None, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["eval", "-d", str(dataset), "--metrics", "nDCG@10", "--output-dir", str(out),
                                      "--baseline", "strong", "--test", "t", "--correction", "none"])
    assert result.exit_code == 0, result.output
    sig = json.loads((out / "eval.json").read_text())["significance"]
    assert sig["baseline"] == "strong" and [c["system"] for c in sig["comparisons"]] == ["weak"]
    assert list(sig["comparisons"][0]["p_values"]) == ["t"]
    bad = CliRunner().invoke(app, ["eval", "-d", str(dataset), "--output-dir", str(out), "--baseline", "bm25"])
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == ["error: --baseline 'bm25' is not one of the systems: weak, strong"]


def test_memoized_systems_keep_their_provenance() -> None:
    from sbmoe.evaluation.systems import memoized

    def dense(data, queries, k):  # noqa: ANN001, ANN202
        return {}

    def lexical(data, queries, k):  # noqa: ANN001, ANN202
        return {}

    dense.describe = lambda: {"model": "m", "fingerprint": "abc"}  # type: ignore[attr-defined]
    lexical.engine = "bm25s"  # type: ignore[attr-defined]
    described = benchmark.system_provenance({"m": memoized(dense), "bm25": memoized(lexical)})
    assert described == {"m": {"model": "m", "fingerprint": "abc"}, "bm25": {"engine": "bm25s"}}
