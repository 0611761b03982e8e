"""BM25: pyserini reproduces the published SciFact figure; bm25s scores equal Lucene's formula by hand."""

from __future__ import annotations

import math
from pathlib import Path

from typer.testing import CliRunner

from sbmoe.bm25.engines import BM25Config, Bm25sIndex, LuceneBM25
from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.runs import read_trec_run


def test_pyserini_bm25_reproduces_published_scifact(scifact_dir: Path, tmp_path: Path) -> None:
    dataset = BeirDataset.open(scifact_dir)
    queries, qrels = dataset.load_split("test")
    searcher = LuceneBM25(LuceneBM25.build(dataset, tmp_path / "lucene"), BM25Config())
    scores = evaluate_run(qrels, searcher.search(queries, 100, drop_self_hits=True), ["nDCG@10", "R@100"])
    assert abs(scores["nDCG@10"] - 0.6789) <= 0.01 and abs(scores["R@100"] - 0.9253) <= 0.01, scores


def test_bm25_cli_index_and_search(scifact_slice: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bm25", "index", str(scifact_slice), "-o", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bm25", "search", "-i", str(tmp_path / "idx"), "-q", str(scifact_slice),
                                 "-o", str(tmp_path / "bm25.trec"), "-k", "5"])
    assert result.exit_code == 0, result.output
    run = read_trec_run(tmp_path / "bm25.trec")
    assert run and all(0 < len(hits) <= 5 for hits in run.values())


def test_bm25s_scores_equal_lucene_formula(tmp_path: Path) -> None:
    docs = ["apple banana apple", "banana cherry", "cherry cherry cherry date", "apple"]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(f'{{"_id": "d{i}", "text": "{t}"}}\n' for i, t in enumerate(docs)))
    dataset = BeirDataset(tmp_path, "toy", drop_self_hits=False)
    k1, b = 0.9, 0.4
    run = Bm25sIndex(dataset, BM25Config(k1=k1, b=b, engine="bm25s")).search({"q": "apple cherry"}, k=4)["q"]
    lengths = [len(d.split()) for d in docs]
    avgdl = sum(lengths) / len(lengths)

    def lucene(term: str, doc: str, length: int) -> float:
        df = sum(term in d.split() for d in docs)
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        tf = doc.split().count(term)
        return idf * tf / (tf + k1 * (1 - b + b * length / avgdl))

    expected = {f"d{i}": lucene("apple", doc, n) + lucene("cherry", doc, n)
                for i, (doc, n) in enumerate(zip(docs, lengths, strict=True))}
    for doc_id, score in run.items():
        assert abs(score - expected[doc_id]) < 1e-5, (doc_id, score, expected[doc_id])
    assert set(run) == {d for d, s in expected.items() if s > 0}
