"""The REST API against independent references: Anserini's response shape (its docs/rest-api.md and
ControllerV1_0), the hits of ``Retriever.search`` in this process, the corpus file's own texts."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import RunningServer

QUERIES = ["does aspirin prevent heart attacks?", "gene expression in tumour cells", "vitamin D and bone density",
           "antibiotic resistance in bacteria", "sleep deprivation effects on memory"]


def reference_run(folder: Path, queries: list[str], k: int) -> dict[str, dict[str, float]]:
    """What the Python API answers for the same folder, loaded afresh in this process."""
    from sbmoe.index.retriever import Retriever

    return Retriever.from_index(folder).search(queries, k=k)


def assert_same_ranking(hits: list[dict], expected: dict[str, float]) -> None:
    assert [h["docid"] for h in hits] == list(expected)
    np.testing.assert_allclose([h["score"] for h in hits], list(expected.values()), rtol=1e-5, atol=1e-5)


def corpus_records(dataset_dir: Path) -> dict[str, dict]:
    lines = (dataset_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return {str(r["_id"]): r for r in map(json.loads, lines)}


def test_anserini_shape_and_documents(server: RunningServer, serve_data: Path) -> None:
    """GET search answers {"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc"}]} as Anserini's
    ControllerV1_0 does, and so does POST with pyserini's body; the index list is a mapping from name to facts;
    documents and status answer too."""
    corpus = corpus_records(serve_data / "scifact50")
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        listing = client.get("/api/v1.0/indexes").json()
        assert set(listing) == {"sci", "hnsw"}
        for name, facts in listing.items():
            assert facts["indexName"] == name and facts["cached"] is True
            assert {"description", "model", "corpus"} <= set(facts)
        assert listing["sci"]["index_type"] == "Flat" and listing["hnsw"]["index_type"] == "HNSW16,Flat"
        assert listing["sci"]["count"] == 50 and listing["sci"]["dim"] == 32 and listing["sci"]["backend"] == "torch"

        found = client.get("/api/v1.0/indexes/sci/search", params={"query": QUERIES[0], "hits": 5, "qid": "q7"})
        assert found.status_code == 200
        body = found.json()
        assert list(body) == ["query", "candidates"]
        assert body["query"] == {"text": QUERIES[0], "qid": "q7"}
        assert len(body["candidates"]) == 5
        for candidate in body["candidates"]:
            assert list(candidate) == ["docid", "score", "doc"]
            record = corpus[candidate["docid"]]
            assert candidate["doc"] == {"title": record["title"], "text": record["text"]}
        assert_same_ranking([{"docid": c["docid"], "score": c["score"]} for c in body["candidates"]],
                            reference_run(server.folders["sci"], [QUERIES[0]], 5)["0"])

        # pyserini's REST client POSTs its SearchParams body; the answer is the GET's, field for field
        posted = client.post("/api/v1.0/indexes/sci/search", json={"query": QUERIES[0], "hits": 5, "qid": "q7",
                                                                   "ef_search": None, "encoder": None})
        assert posted.status_code == 200 and posted.json() == body
        other = client.post("/api/v1.0/indexes/sci/search", json={"query": QUERIES[0], "encoder": "bge-base-en"})
        assert other.status_code == 400 and len(other.text.splitlines()) == 1  # the server's one-line error

        doc_id = body["candidates"][0]["docid"]
        document = client.get(f"/api/v1.0/indexes/sci/documents/{doc_id}").json()
        assert document == {"docid": doc_id, "doc": {"title": corpus[doc_id]["title"], "text": corpus[doc_id]["text"]}}
        status = client.get("/api/v1.0/indexes/sci/status").json()
        assert status["cached"] is True and status["count"] == 50


@pytest.mark.parametrize("name", ["sci", "hnsw"])
def test_batched_post_equals_retriever_search(server: RunningServer, name: str, serve_data: Path) -> None:
    """POST with several queries gives, per query, exactly the hits ``Retriever.search`` gives in process."""
    from sbmoe.index.hits import snippet

    corpus = corpus_records(serve_data / "scifact50")
    queries = [QUERIES[0], {"qid": "mine", "text": QUERIES[1]}, QUERIES[2]]
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        response = client.post(f"/api/v1.0/indexes/{name}/search", json={"queries": queries, "k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["index"], body["mode"], body["k"]) == (name, "dense", 10)
    assert [r["qid"] for r in body["results"]] == ["0", "mine", "2"]
    expected = reference_run(server.folders[name], [QUERIES[0], QUERIES[1], QUERIES[2]], 10)
    for result, key in zip(body["results"], ["0", "1", "2"], strict=True):
        assert_same_ranking(result["hits"], expected[key])
        assert [h["rank"] for h in result["hits"]] == list(range(1, 11))
        for hit in result["hits"]:
            record = corpus[hit["docid"]]
            assert hit["title"] == record["title"] and hit["snippet"] == snippet(record["text"])


def test_concurrent_requests_share_a_batch_and_keep_their_hits(server: RunningServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that arrive while the encoder is busy are encoded together in one pass, and each still gets
    the hits the Python API gives for its own query."""
    served = server.controller.get("sci")
    release, entered = threading.Event(), threading.Event()
    original = served.retriever.encode_queries

    def held(texts):  # the first pass waits until every request is queued behind it
        entered.set()
        release.wait(10)
        return original(texts)

    monkeypatch.setattr(served.retriever, "encode_queries", held)
    before = server.controller.metrics.batches.count()
    results: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
            results[i] = client.post("/api/v1.0/indexes/sci/search", json={"queries": [QUERIES[i]], "k": 5})

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 5)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while server.controller.batcher.depth() < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    expected = reference_run(server.folders["sci"], QUERIES, 5)
    for i in range(5):
        assert results[i].status_code == 200, results[i].text
        assert_same_ranking(results[i].json()["results"][0]["hits"], expected[str(i)])
    passes = server.controller.metrics.batches.count() - before
    assert passes == 2  # the held first request alone, then the four queued behind it in one pass


def test_health_metrics_request_ids_and_access_log(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    with httpx.Client(base_url=server.url) as client:
        health = client.get("/healthz")  # the one path without a token
        assert health.status_code == 200 and health.json() == {"status": "ok", "indexes": 2}
        with caplog.at_level(logging.INFO, logger="sbmoe.serving.access"):
            answered = client.get("/api/v1.0/indexes/sci/status", headers={**server.auth, "X-Request-ID": "abc-123"})
            for _ in range(200):  # the line is written just after the answer has gone out
                lines = [r.getMessage() for r in caplog.records if "abc-123" in r.getMessage()]
                if lines:
                    break
                time.sleep(0.01)
        assert answered.headers["x-request-id"] == "abc-123"
        assert len(lines) == 1 and '"GET /api/v1.0/indexes/sci/status" 200' in lines[0]
        generated = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        metrics = client.get("/metrics", headers=server.auth)
        docs = client.get("/docs", headers=server.auth)
        schema = client.get("/openapi.json", headers=server.auth).json()
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert re.search(r'^sbmoe_http_requests_total\{method="GET",route="/api/v1.0/indexes/\{name\}/status",'
                     r'status="200"\} \d+', text, re.M)
    for name in ("sbmoe_http_request_duration_seconds_bucket", "sbmoe_encoder_batch_queries_count",
                 "sbmoe_encoder_queue_depth", "sbmoe_http_requests_in_flight", 'sbmoe_index_generation{index="sci"}'):
        assert name in text
    for line in text.splitlines():  # the exposition format: comments, or "name{labels} value"
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [-+0-9.eInf]+',
                                                     line), line
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/api/v1.0/indexes/{name}/search" in schema["paths"]


def test_bm25_and_hybrid_modes_equal_lucene_and_rrf(server: RunningServer, bm25_dir: Path) -> None:
    """Mode bm25 is Lucene's ranking; hybrid is reciprocal-rank fusion of the dense and BM25 top 100."""
    from sbmoe.bm25.engines import BM25Config, LuceneBM25
    from sbmoe.bm25.fusion import fuse

    queries = QUERIES[:2]
    lucene = LuceneBM25(bm25_dir, BM25Config())
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        sparse = client.post("/api/v1.0/indexes/sci/search", json={"queries": queries, "k": 5, "mode": "bm25"})
        hybrid = client.post("/api/v1.0/indexes/sci/search", json={"queries": queries, "k": 5, "mode": "hybrid"})
        anserini = client.get("/api/v1.0/indexes/sci/search", params={"query": queries[0], "mode": "bm25"})
        no_bm25 = client.post("/api/v1.0/indexes/hnsw/search", json={"queries": queries, "mode": "hybrid"})
    expected_sparse = lucene.search({str(i): q for i, q in enumerate(queries)}, 5)
    expected_hybrid = fuse(reference_run(server.folders["sci"], queries, 100),
                           lucene.search({str(i): q for i, q in enumerate(queries)}, 100), "rrf", depth=5)
    for i in range(2):
        assert_same_ranking(sparse.json()["results"][i]["hits"], expected_sparse[str(i)])
        assert_same_ranking(hybrid.json()["results"][i]["hits"], expected_hybrid[str(i)])
    assert [c["docid"] for c in anserini.json()["candidates"]] == list(lucene.search({"0": queries[0]}, 10)["0"])
    assert no_bm25.status_code == 400 and "--bm25 hnsw=DIR" in no_bm25.json()["error"]
