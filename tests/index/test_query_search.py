"""``sbmoe search --query``: a ranked list with titles and snippets from the indexed corpus, the same hits as
``Retriever.search("text")``, and scores that are the encoder's dot products (checked with numpy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.index.hits import snippet
from sbmoe.index.retriever import Retriever
from sbmoe.models.encoding import encode_texts

runner = CliRunner()
QUERIES = ["statins and breast cancer", "how do cells divide"]


@pytest.fixture(scope="module")
def tiny_index(tiny_bert_dir: Path, scifact_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("query-index") / "idx"
    result = runner.invoke(app, ["index", str(scifact_slice), "-o", str(out), "-m", str(tiny_bert_dir), "--no-cache"])
    assert result.exit_code == 0, result.output
    return out


def corpus(scifact_slice: Path) -> dict[str, tuple[str, str]]:
    return {doc.doc_id: (doc.title, doc.text) for doc in BeirDataset.open(scifact_slice).iter_corpus()}


def test_json_hits_equal_retriever_search_and_brute_force(tiny_index: Path, tiny_bert_dir: Path,
                                                          scifact_slice: Path) -> None:
    meta = json.loads((tiny_index / "meta.json").read_text())
    assert meta["dataset"] == str(scifact_slice.resolve())
    args = ["search", "-i", str(tiny_index), "-k", "5", "--json"]
    result = runner.invoke(app, [*args, "--query", QUERIES[0], "--query", QUERIES[1]])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [entry["query"] for entry in shown] == QUERIES

    retriever = Retriever.from_index(tiny_index)
    docs = corpus(scifact_slice)
    ids = list(docs)
    matrix = encode_texts(retriever.model, [f"{t} {x}".strip() for t, x in docs.values()])
    for entry, text in zip(shown, QUERIES, strict=True):
        expected = retriever.search(text, k=5)["0"]  # one plain string
        assert [h["doc_id"] for h in entry["hits"]] == list(expected)
        assert [h["rank"] for h in entry["hits"]] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([h["score"] for h in entry["hits"]], list(expected.values()), atol=1e-6)
        query = encode_texts(retriever.model, [text], task="query")
        scores = retriever.model.similarity(query.astype(np.float64), matrix.astype(np.float64)).numpy()[0]  # by hand
        top = [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        assert [h["doc_id"] for h in entry["hits"]] == top
        for hit in entry["hits"]:
            title, body = docs[hit["doc_id"]]
            assert hit["title"] == title and hit["snippet"] == snippet(body)
    together = retriever.search(QUERIES, k=5)  # a list: ids "0", "1", ... and the hits of each query alone
    for i, text in enumerate(QUERIES):
        alone = retriever.search(text, k=5)["0"]
        assert list(together[str(i)]) == list(alone)
        np.testing.assert_allclose(list(together[str(i)].values()), list(alone.values()), atol=1e-5)


def test_readable_list_shows_rank_score_id_title_snippet(tiny_index: Path, scifact_slice: Path) -> None:
    result = runner.invoke(app, ["search", "-i", str(tiny_index), "--query", QUERIES[0], "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"query: {QUERIES[0]}"
    hits = json.loads(runner.invoke(app, ["search", "-i", str(tiny_index), "--query", QUERIES[0], "-k", "3",
                                          "--json"]).output)[0]["hits"]
    docs = corpus(scifact_slice)
    for n, hit in enumerate(hits):
        rank_line, snippet_line = lines[1 + 2 * n], lines[2 + 2 * n]
        rank, score, doc_id, *title = rank_line.split()
        assert (int(rank), doc_id) == (n + 1, hit["doc_id"])
        assert float(score) == pytest.approx(hit["score"], abs=1e-4)
        assert " ".join(title) == " ".join(docs[doc_id][0].split())
        assert snippet_line.strip() == snippet(docs[doc_id][1])


def test_snippet_cuts_at_a_word() -> None:
    text = "word " * 100
    cut = snippet(text, limit=23)
    assert cut == "word word word word ..."
    assert snippet("  short\n text ") == "short text"


def test_index_without_its_corpus_still_answers(tiny_index: Path, tmp_path: Path) -> None:
    moved = tmp_path / "idx"
    shutil.copytree(tiny_index, moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["dataset"] = str(tmp_path / "gone")
    (moved / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["search", "-i", str(moved), "--query", QUERIES[0], "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)[0]["hits"]
    assert len(hits) == 2 and hits[0]["title"] is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--query", " "], "non-empty text"),
    (["--query", "x", "--output", "r.trec"], "without --queries and --output"),
    ([], "give --query TEXT, or --queries with --output"),
    (["--query", "x", "-k", "0"], "-k must be positive"),
])
def test_bad_query_options_are_one_line(tiny_index: Path, extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["search", "-i", str(tiny_index), *extra])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_another_corpus_is_refused(tiny_index: Path, scifact_slice: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(scifact_slice, other)
    lines = (other / "corpus.jsonl").read_text().splitlines()
    (other / "corpus.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    result = runner.invoke(app, ["search", "-i", str(tiny_index), "--query", "x", "--dataset", str(other)])
    assert result.exit_code == 1 and "not the corpus this index was built from" in result.output
