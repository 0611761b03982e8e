"""BEIR loader: precise errors on malformed files, counted warnings, registry lookup, download."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest

from sbmoe.data import BeirDataset, DataFormatError, DatasetNotFoundError, read_queries, registry, resolve_dataset


def write_beir(root: Path, corpus: str, queries: str, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text(queries, encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


GOOD_CORPUS = '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "text": "two"}\n'
GOOD_QUERIES = '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"


def test_good_dataset_streams_and_validates(tmp_path: Path) -> None:
    ds = BeirDataset(write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS), "toy")
    docs = list(ds.iter_corpus())
    assert [d.doc_id for d in docs] == ["d1", "d2"]
    assert docs[0].as_text() == "T one" and docs[1].as_text() == "two"
    queries, qrels = ds.load_split("test")
    assert queries == {"q1": "first", "q2": "second"}
    assert qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert [len(c) for c in ds.iter_corpus_chunks(1)] == [1, 1]


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n', "corpus.jsonl:2: invalid JSON"),
        ('{"_id": "d1", "text": "ok"}\n{"text": "no id"}\n', "corpus.jsonl:2: missing '_id'"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', "corpus.jsonl:2: duplicate _id 'd1'"),
        ('["not", "an", "object"]\n', "corpus.jsonl:1: expected a JSON object"),
        ('{"_id": "d1", "text": 5}\n', "corpus.jsonl:1: field 'text' must be a string"),
        ("\n\n", "corpus is empty"),
    ],
)
def test_malformed_corpus_names_file_and_line(tmp_path: Path, corpus: str, message: str) -> None:
    ds = BeirDataset(write_beir(tmp_path, corpus, GOOD_QUERIES, GOOD_QRELS), "toy")
    with pytest.raises(DataFormatError, match=message.replace("[", r"\[")):
        list(ds.iter_corpus())


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"test.tsv:2: expected 3 tab-separated fields, got 2"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: relevance 'high' is not a number"),
    ],
)
def test_malformed_qrels_names_file_and_line(tmp_path: Path, qrels: str, message: str) -> None:
    ds = BeirDataset(write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, qrels), "toy")
    with pytest.raises(DataFormatError, match=message):
        ds.load_split("test")


def test_qrels_with_unknown_ids_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Unknown queries are skipped; unknown documents are kept for scoring (BEIR, trec_eval) unless asked not to."""
    qrels = GOOD_QRELS + "q1\tmissing-doc\t1\nq1\tother-missing\t1\nq9\td1\t1\n"
    ds = BeirDataset(write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, qrels), "toy")
    with caplog.at_level(logging.WARNING):
        _, loaded = ds.load_split("test")
    assert loaded == {"q1": {"d1": 1, "missing-doc": 1, "other-missing": 1}, "q2": {"d2": 2}}
    assert "kept 2 judgements naming documents not in the corpus" in caplog.text
    assert "skipped 1 judgements naming queries not in queries.jsonl" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, loaded = ds.load_split("test", keep_unknown_docs=False)
    assert loaded == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert "skipped 2 judgements naming documents not in the corpus" in caplog.text


def test_missing_split_lists_available_ones(tmp_path: Path) -> None:
    ds = BeirDataset(write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS), "toy")
    with pytest.raises(DataFormatError, match=r"dev.tsv: file not found \(splits here: test\)"):
        ds.load_split("dev")


def test_query_files_jsonl_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text("a\tfirst query\nb\tsecond\n", encoding="utf-8")
    assert read_queries(tmp_path / "q.tsv") == {"a": "first query", "b": "second"}
    (tmp_path / "q.jsonl").write_text(GOOD_QUERIES, encoding="utf-8")
    assert read_queries(tmp_path / "q.jsonl") == {"q1": "first", "q2": "second"}
    (tmp_path / "bad.tsv").write_text("a\tok\nno-tab-here\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="bad.tsv:2"):
        read_queries(tmp_path / "bad.tsv")


def test_registry_prefers_sbmoe_data_over_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = write_beir(tmp_path / "mine" / "scifact", GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    monkeypatch.setenv("SBMOE_DATA", str(tmp_path / "mine"))
    assert resolve_dataset("scifact") == own


def test_shared_scifact_matches_published_counts(scifact_dir: Path) -> None:
    ds = BeirDataset(scifact_dir, "scifact")
    assert ds.corpus_size() == 5183
    queries, qrels = ds.load_split("test")
    assert len(queries) == 300 and sum(len(v) for v in qrels.values()) == 339


def test_unknown_dataset_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"not found \(no official download for this name\); looked in"):
        resolve_dataset("no-such-dataset")


def test_download_unpacks_official_zip_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real download path, fed a file:// URL to a zip laid out like BEIR's (toy/corpus.jsonl ...)."""
    src = write_beir(tmp_path / "src" / "toy", GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*"):
            zf.write(path, path.relative_to(src.parent))
    monkeypatch.setitem(registry.KNOWN_DATASETS, "toy", registry.DatasetInfo("toy", archive.as_uri()))
    monkeypatch.chdir(tmp_path)
    root = resolve_dataset("toy")
    assert root == registry.cache_root() / "datasets" / "toy"
    assert json.loads((root / "corpus.jsonl").read_text().splitlines()[0])["_id"] == "d1"
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_failed_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = (tmp_path / "absent.zip").as_uri()
    monkeypatch.setitem(registry.KNOWN_DATASETS, "gone", registry.DatasetInfo("gone", missing))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="downloading .* failed"):
        resolve_dataset("gone")
    assert list((registry.cache_root() / "datasets").iterdir()) == []
