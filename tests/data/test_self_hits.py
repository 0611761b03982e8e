"""Self-hits decided from the data: classic collections keep a relevant document whose id equals the query
id, ArguAna-like collections lose the query's own document, the user's flag overrides both, and the
check agrees with what is known of the real ArguAna and Cranfield."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sbmoe.bm25.engines import BM25Config, Bm25sIndex
from sbmoe.data import BeirDataset, load_queries, resolve_dataset
from sbmoe.data.document import Document
from sbmoe.data.registry import KNOWN_DATASETS
from sbmoe.data.self_hits import decide_self_hits, holds_query_text


def write_collection(root: Path, docs: dict[str, str], queries: dict[str, str], qrels: list[tuple[str, str]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    judgements = "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judgements)
    return root


# A classic test collection: ids 1..4 for documents and 1..2 for queries mean different things, and the
# document relevant to query 2 happens to be document 2.
CLASSIC_DOCS = {"1": "boundary layer flow over a flat plate", "2": "heat transfer in hypersonic flow at high mach",
                "3": "buckling of thin cylindrical shells", "4": "slip flow of rarefied gases"}
CLASSIC_QUERIES = {"1": "buckling of shells under pressure", "2": "hypersonic heat transfer"}
# ArguAna-like: each query is an argument of the corpus under its own id; the relevant document is its counter.
ARGUMENT = "school uniforms reduce bullying because pupils cannot be singled out for their clothes"
ARGUMENTS_DOCS = {"a1": ARGUMENT,
                  "a1-counter": "uniforms do not stop bullying; pupils are singled out anyway for clothes",
                  "a2": "Nuclear power is safe and cheap.", "a2-counter": "nuclear power is neither safe nor cheap",
                  "other": "bullying in schools"}
ARGUMENTS_QUERIES = {"a1": ARGUMENT, "a2": "nuclear power is safe"}  # a2: the start of its document's text


def bm25_run(dataset: BeirDataset) -> dict[str, dict[str, float]]:
    queries, _ = dataset.load_split("test")
    return Bm25sIndex(dataset, BM25Config(engine="bm25s")).search(queries, 3, drop_self_hits=dataset.drop_self_hits)


def test_classic_collection_keeps_relevant_document_with_the_query_id(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    root = write_collection(tmp_path / "classic", CLASSIC_DOCS, CLASSIC_QUERIES, [("1", "3"), ("2", "2")])
    dataset = BeirDataset.open(root)
    assert dataset.drop_self_hits is None  # not in the registry: decided from the data
    with caplog.at_level(logging.WARNING):
        run = bm25_run(dataset)
    assert dataset.drop_self_hits == frozenset()
    assert next(iter(run["2"])) == "2"  # the relevant document, whose id equals the query id, ranks first
    decisions = [r.getMessage() for r in caplog.records if r.name == "sbmoe.data.beir"]
    assert decisions == ["classic: 2 query ids are also document ids but those documents hold other text: "
                         "hits are kept (--drop-self-hits drops them)"]


def test_argument_collection_drops_only_the_queries_own_documents(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    queries = {**ARGUMENTS_QUERIES, "other": "cheap power"}  # "other": shared id, unrelated text
    root = write_collection(tmp_path / "debates", ARGUMENTS_DOCS, queries,
                            [("a1", "a1-counter"), ("a2", "a2-counter"), ("other", "a2-counter")])
    dataset = BeirDataset.open(root)
    with caplog.at_level(logging.WARNING):
        run = bm25_run(dataset)
    assert dataset.drop_self_hits == frozenset({"a1", "a2"})
    assert "a1" not in run["a1"] and "a2" not in run["a2"] and run["a1"]
    decisions = [r.getMessage() for r in caplog.records if r.name == "sbmoe.data.beir"]
    assert decisions == ["debates: 2 of 3 queries are documents of the corpus (same id, same text): their "
                         "self-hits are dropped; 1 other shared ids are kept (--keep-self-hits keeps them)"]


def test_flags_override_the_data_and_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_collection(tmp_path / "debates", ARGUMENTS_DOCS, ARGUMENTS_QUERIES,
                            [("a1", "a1-counter"), ("a2", "a2-counter")])
    kept = BeirDataset.open(root, drop_self_hits=False)
    assert "a1" in bm25_run(kept)["a1"] and kept.drop_self_hits is False
    classic = write_collection(tmp_path / "classic", CLASSIC_DOCS, CLASSIC_QUERIES, [("1", "3"), ("2", "2")])
    dropped = BeirDataset.open(classic, drop_self_hits=True)
    assert "2" not in bm25_run(dropped)["2"]
    # load_queries (sbmoe search, sbmoe bm25 search): the flag, else the data; a queries file never drops
    assert load_queries(str(classic))[1] == frozenset()
    assert load_queries(str(classic), drop_self_hits=True)[1] is True
    (tmp_path / "q.tsv").write_text("1\tbuckling\n")
    assert load_queries(str(tmp_path / "q.tsv"))[1] is False
    assert load_queries(str(tmp_path / "q.tsv"), drop_self_hits=True)[1] is True
    # a registered name follows the registry unless overridden
    monkeypatch.setenv("SBMOE_DATA", str(tmp_path))
    write_collection(tmp_path / "cranfield", CLASSIC_DOCS, CLASSIC_QUERIES, [("2", "2")])
    assert BeirDataset.open("cranfield").drop_self_hits is False
    assert BeirDataset.open("cranfield", drop_self_hits=True).drop_self_hits is True


def test_registry_states_the_rule_for_every_known_set() -> None:
    assert all(isinstance(info.drop_self_hits, bool) for info in KNOWN_DATASETS.values())
    expected = {"arguana": True, "quora": True, "scifact": False, "cranfield": False, "cacm": False,
                "msmarco-dl19-mini": False}
    assert {name: KNOWN_DATASETS[name].drop_self_hits for name in expected} == expected


def test_text_match_rules() -> None:
    doc = Document("x", "A Title", "The quick, brown fox -- jumps over the lazy dog.")
    assert holds_query_text("the QUICK brown fox jumps over the lazy dog", doc)  # equal after normalising
    assert holds_query_text("A title: the quick brown fox", doc)  # start of title + text
    assert holds_query_text("the quick brown", doc)  # three words: a prefix
    assert not holds_query_text("the quick", doc)  # too short to be a prefix by design
    assert not holds_query_text("the quick brow", doc)  # prefix must end at a word boundary
    assert not holds_query_text("", doc)


@pytest.mark.parametrize(("name", "queries", "shared", "self_queries"),
                         [("arguana", 1406, 1298, 1298), ("cranfield", 225, 225, 0)])
def test_check_on_real_collections(name: str, queries: int, shared: int, self_queries: int) -> None:
    """The shared ArguAna: 1,298 of its 1,406 queries are in the corpus under their own id with their own text
    (the other 108 texts are held under a sibling id; data README); Cranfield: all 225 query ids are
    document ids, none of them with the query's text."""
    dataset = BeirDataset(resolve_dataset(name, download=False), name)
    decision = decide_self_hits(name, dataset.load_queries(), dataset.iter_corpus())
    assert (decision.queries, decision.shared_ids, len(decision.self_queries)) == (queries, shared, self_queries)
