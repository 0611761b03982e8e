"""The sbmoe command end to end with a tiny random BERT over a 50-document SciFact slice."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.runs import read_trec_run

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_index_search_eval_end_to_end(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    result = invoke("index", scifact_slice, "--output", index_dir, "--model", tiny_bert_dir, "-b", "8")
    assert result.exit_code == 0, result.output
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["count"] == 50 and meta["dim"] == 32 and meta["pooling"] == "mean"
    assert {"model", "model_fingerprint", "normalize", "sbmoe_version"} <= set(meta)

    run_file = tmp_path / "run.trec"
    result = invoke("search", "--index", index_dir, "--queries", scifact_slice, "--output", run_file, "-k", "10")
    assert result.exit_code == 0, result.output
    run = read_trec_run(run_file)
    assert len(run) > 0 and all(len(hits) == 10 for hits in run.values())

    out = tmp_path / "results"
    result = invoke("eval", "--model", tiny_bert_dir, "--datasets", scifact_slice, "--metrics", "nDCG@10,R@100",
                    "--output-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    record = report["records"][0]
    assert "nDCG@10" in result.output and "scifact50" in result.output
    # the printed figure is the one ir-measures gives on the written run file
    from sbmoe.data import BeirDataset

    _, qrels = BeirDataset.open(scifact_slice).load_split("test")
    rescored = evaluate_run(qrels, read_trec_run(Path(record["run_file"])), ["nDCG@10"])
    assert abs(rescored["nDCG@10"] - record["metrics"]["nDCG@10"]) < 1e-6


def test_search_refuses_index_of_another_model(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    assert invoke("index", scifact_slice, "-o", tmp_path / "idx", "-m", tiny_bert_dir).exit_code == 0
    result = invoke("search", "-i", tmp_path / "idx", "-q", scifact_slice, "-o", tmp_path / "r.trec", "-m", "minilm")
    assert result.exit_code == 1
    assert "encoder produces 384-d embeddings but the index holds 32-d vectors" in result.output
    assert not (tmp_path / "r.trec").exists()


def test_errors_are_one_line(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "1", "text": "ok"}\n{oops}\n')
    cases = [
        (("index", bad, "-o", tmp_path / "i1", "-m", tiny_bert_dir), "corpus.jsonl:2: invalid JSON"),
        (("index", "no-such-set", "-o", tmp_path / "i2", "-m", tiny_bert_dir), "dataset 'no-such-set' not found"),
        (("index", scifact_slice, "-o", tmp_path / "i3", "-m", "contriever"), "Available offline: minilm"),
        (("eval", "-m", tiny_bert_dir, "-d", scifact_slice, "--metrics", "nDGC@10"), "unknown metric 'nDGC@10'"),
        (("search", "-i", tmp_path / "missing", "-q", scifact_slice, "-o", tmp_path / "r"), "index folder not found"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert errors == [lines[-1]] and message in errors[0], (args, result.output)
    assert not (tmp_path / "i1").exists() and not list(tmp_path.glob(".i1*"))
