"""A repeated evaluation reads corpus and query embeddings from the cache and loads no encoder weights,
with the cold run's numbers; the cold run itself ranks as a plain uncached Retriever does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.evaluation import systems as systems_module
from sbmoe.evaluation.benchmark import EvalConfig, evaluate
from sbmoe.evaluation.systems import SystemsConfig
from sbmoe.index.retriever import Retriever
from sbmoe.models.embedding_cache import CorpusEmbeddingCache, EncoderFacts, EncoderMemo, queries_fingerprint
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.runs import read_trec_run

METRICS = ["nDCG@10", "R@100", "RR@10"]


def refuse_to_load(config: EncoderConfig):
    raise AssertionError(f"loaded {config.model} although every embedding is cached")


def run_eval(model: Path, dataset: Path, out: Path):
    config = EvalConfig(systems=SystemsConfig(models=[str(model)], show_progress=False), datasets=[str(dataset)],
                        metrics=METRICS, output_dir=out)
    return evaluate(config)


def test_warm_eval_loads_no_encoder_and_gives_the_cold_numbers(tiny_bert_dir: Path, scifact_slice: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cold = run_eval(tiny_bert_dir, scifact_slice, tmp_path / "cold")
    # the cold run ranks exactly as an uncached in-memory Retriever over the same model
    dataset = BeirDataset.open(scifact_slice)
    queries, _ = dataset.load_split("test")
    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    reference = Retriever.from_dataset(model, dataset, show_progress=False).search(
        queries, 100, drop_self_hits=dataset.drop_self_hits)
    (cold_file,) = (tmp_path / "cold").glob("*/*.run")
    ranked = read_trec_run(cold_file)
    assert set(ranked) == set(reference)
    for qid, hits in reference.items():
        assert sorted(ranked[qid]) == sorted(hits)
        np.testing.assert_allclose([ranked[qid][d] for d in hits], list(hits.values()), atol=1e-5)

    monkeypatch.setattr(systems_module, "load_encoder", refuse_to_load)
    warm = run_eval(tiny_bert_dir, scifact_slice, tmp_path / "warm")
    assert [r.metrics for r in warm.records] == [r.metrics for r in cold.records]
    cold_files = sorted((tmp_path / "cold").glob("*/*.run"))
    warm_files = sorted((tmp_path / "warm").glob("*/*.run"))
    assert [f.read_text() for f in warm_files] == [f.read_text() for f in cold_files]
    provenance = json.loads((tmp_path / "warm" / "eval.json").read_text())
    assert provenance["records"][0]["metrics"] == cold.records[0].metrics

    # the query embeddings came from the cache entry keyed like the corpus's, and equal a fresh encoding
    facts = EncoderFacts.of(model)
    hit = CorpusEmbeddingCache().get(facts.key(queries_fingerprint(queries)))
    assert hit is not None and hit[0] == list(queries)
    from sbmoe.models.encoding import encode_texts

    fresh = encode_texts(model, [queries[q] for q in hit[0]], task="query")
    np.testing.assert_allclose(np.asarray(hit[1]), fresh, atol=1e-6)


def test_warm_cli_eval_prints_the_same_table(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    args = ["eval", "-m", str(tiny_bert_dir), "-d", str(scifact_slice), "--metrics", "nDCG@10,R@100"]
    cold = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "a")])
    assert cold.exit_code == 0, cold.output
    monkeypatch.setattr(systems_module, "load_encoder", refuse_to_load)
    warm = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "b")])
    assert warm.exit_code == 0, warm.output
    assert warm.output.replace(str(tmp_path / "b"), "OUT") == cold.output.replace(str(tmp_path / "a"), "OUT")


def test_changed_model_folder_or_new_queries_load_the_model_again(tiny_bert_dir: Path, scifact_slice: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    run_eval(folder, scifact_slice, tmp_path / "cold")
    config = EncoderConfig(model=str(folder))
    assert EncoderMemo().get(config) is not None
    assert EncoderMemo().get(EncoderConfig(model=str(folder), max_length=16)) is None  # other options: a miss

    loads: list[str] = []
    original = systems_module.load_encoder
    monkeypatch.setattr(systems_module, "load_encoder", lambda c: loads.append(c.model) or original(c))
    # one query reworded: the corpus is cached but the queries are not, so the model loads
    reworded = tmp_path / "reworded"
    shutil.copytree(scifact_slice, reworded)
    rows = [json.loads(line) for line in (reworded / "queries.jsonl").read_text().splitlines()]
    rows[0]["text"] = "a reworded first query"
    (reworded / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_eval(folder, reworded, tmp_path / "reworded-run")
    assert loads == [str(folder)]

    config_file = folder / "config.json"
    config_file.write_text(config_file.read_text() + "\n")  # same weights, but the folder changed
    assert EncoderMemo().get(config) is None
    run_eval(folder, scifact_slice, tmp_path / "again")
    assert loads == [str(folder), str(folder)]


def test_warm_eval_in_a_fresh_process_imports_no_torch(tiny_bert_dir: Path, scifact_slice: Path,
                                                       tmp_path: Path) -> None:
    """With every embedding cached, the command needs neither torch nor sentence-transformers nor the weights."""
    import subprocess
    import sys

    cold = run_eval(tiny_bert_dir, scifact_slice, tmp_path / "cold")
    code = """
import json, sys
from sbmoe.cli import app
app(["eval", "-m", sys.argv[1], "-d", sys.argv[2], "--metrics", "nDCG@10,R@100,RR@10", "--output-dir", sys.argv[3]],
    standalone_mode=False)
print(json.dumps(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tiny_bert_dir), str(scifact_slice), str(tmp_path / "warm")],
                          capture_output=True, text=True, timeout=600)  # inherits this test's SBMOE_CACHE
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    warm = json.loads((tmp_path / "warm" / "eval.json").read_text())
    assert [r["metrics"] for r in warm["records"]] == [r.metrics for r in cold.records]
