"""`sbmoe eval --datasets all`: every BEIR folder under the data roots is evaluated and one leaderboard
(markdown table, eval.json, PNG) is written, also for a single system."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset, local_datasets, registry
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.runs import read_trec_run


def collection(root: Path, topic: str, with_qrels: bool = True) -> None:
    (root / "qrels").mkdir(parents=True)
    docs = [f"{topic} study number {i}" if i % 2 else f"unrelated text {i}" for i in range(8)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"{topic}-{i}", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": f"{topic} study"}) + "\n")
    if with_qrels:
        (root / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\t{topic}-1\t1\n")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$SBMOE_DATA with two collections, a folder without qrels and one that is not a dataset; the other
    data roots (./data, the shared folder) are hidden so that "all" means exactly this root."""
    root = tmp_path / "data"
    collection(root / "alpha", "aspirin")
    collection(root / "beta", "statins")
    collection(root / "unjudged", "sleep", with_qrels=False)
    (root / "notes").mkdir()
    monkeypatch.setenv("SBMOE_DATA", str(root))
    monkeypatch.setattr(registry, "search_roots", lambda: [root])
    return root


def test_local_datasets_lists_beir_folders_with_qrels(data_root: Path) -> None:
    assert local_datasets() == ["alpha", "beta"]
    assert local_datasets("train") == []


def test_eval_all_writes_one_leaderboard(data_root: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["eval", "-m", str(tiny_bert_dir), "-d", "all", "--metrics", "nDCG@10,R@100",
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert [(r["dataset"], r["split"]) for r in report["records"]] == [("alpha", "test"), ("beta", "test")]
    for record in report["records"]:  # each figure is the one ir-measures gives on the run file written
        _, qrels = BeirDataset.open(record["dataset"]).load_split()
        rescored = evaluate_run(qrels, read_trec_run(Path(record["run_file"])), ["nDCG@10"])["nDCG@10"]
        assert abs(rescored - record["metrics"]["nDCG@10"]) < 1e-9
    table = (out / "leaderboard.md").read_text()
    system = report["records"][0]["system"]
    for record in report["records"]:
        assert f"| {record['dataset']} | {record['metrics']['nDCG@10']:.4f} |" in table
    assert f"| nDCG@10 | {system} |" in table
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_all_without_collections_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tiny_bert_dir: Path) -> None:
    monkeypatch.setattr(registry, "search_roots", lambda: [tmp_path / "empty"])
    result = CliRunner().invoke(app, ["eval", "-m", str(tiny_bert_dir), "-d", "all", "--output-dir",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: --datasets all: no BEIR folder (corpus.jsonl and qrels) "
                                                  "under the data roots; set SBMOE_DATA or put datasets in ./data"]
