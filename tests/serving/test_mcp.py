"""The MCP tools through a real MCP client session over streamable HTTP behind the token (the module's server);
answers are held against the REST API and the Python API. Over stdio: tests/serving/test_cli_serve.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .conftest import RunningServer
from .mcp_helpers import TOOLS, call_all, error_text, structured

QUERY = "does aspirin prevent heart attacks?"
def over_http(server: RunningServer, calls: list[tuple[str, dict]], token: str | None = None) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def session() -> tuple[set[str], list[Any]]:
        headers = {"Authorization": f"Bearer {token or server.token}"}
        async with (httpx2.AsyncClient(headers=headers, timeout=60) as http,
                    Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client):
            return await call_all(client, calls)

    return asyncio.run(session())


def test_tools_over_streamable_http(server: RunningServer, serve_data: Path, bm25_dir: Path) -> None:
    from sbmoe.bm25.engines import BM25Config, LuceneBM25
    from sbmoe.bm25.fusion import reciprocal_rank_fusion
    from sbmoe.data import BeirDataset
    from sbmoe.evaluation.metrics import evaluate_run
    from sbmoe.index.retriever import Retriever

    given_run = {"0": {"4983": 1.0}, "1": {"5836": 2.0, "7912": 1.0}}
    names, results = over_http(server, [
        ("list_indexes", {}),
        ("search", {"query": QUERY, "index": "sci", "k": 5}),
        ("get_document", {"docid": "4983", "index": "sci"}),
        ("fuse", {"query": QUERY, "indexes": ["sci", "hnsw"], "modes": ["dense"], "k": 5}),
        ("evaluate", {"index": "sci", "metrics": ["nDCG@10", "R@50"], "k": 50}),
        ("evaluate", {"index": "sci", "run": given_run, "metrics": ["nDCG@10"]}),
        ("search", {"query": QUERY, "index": "../sci"}),
        ("search", {"query": QUERY, "k": 10**9}),
        ("search", {"query": QUERY, "k": "ten"}),
        ("evaluate", {"index": "sci", "split": "../../etc/passwd"}),
        ("fuse", {"query": QUERY}),  # the first index, each of its modes: dense and bm25
    ])
    assert names == TOOLS
    listing, searched, document, fused, evaluated, scored = map(structured, results[:6])
    with httpx.Client(base_url=server.url, headers=server.auth) as rest:
        assert listing == rest.get("/api/v1.0/indexes").json()
        rest_hits = rest.post("/api/v1.0/indexes/sci/search", json={"queries": [QUERY], "k": 5}).json()
        assert searched["hits"] == rest_hits["results"][0]["hits"]
        rest_doc = rest.get("/api/v1.0/indexes/sci/documents/4983").json()
        assert {"title": document["title"], "text": document["text"]} == rest_doc["doc"]

    sci, hnsw = (Retriever.from_index(server.folders[name]) for name in ("sci", "hnsw"))
    depth = 50  # fuse takes each ranking's top max(k, 100), capped at the server's --max-k (50 here)
    expected = reciprocal_rank_fusion([sci.search([QUERY], depth), hnsw.search([QUERY], depth)], depth=5)["0"]
    assert [h["docid"] for h in fused["hits"]] == list(expected)
    np.testing.assert_allclose([h["score"] for h in fused["hits"]], list(expected.values()), rtol=1e-6)

    dataset = BeirDataset.open(serve_data / "scifact50")
    queries, qrels = dataset.load_split("test")
    own_run = sci.search(queries, k=50, drop_self_hits=dataset.drop_self_hits)
    assert evaluated["queries"] == len(queries) and evaluated["split"] == "test"
    for metric, value in evaluate_run(qrels, own_run, ["nDCG@10", "R@50"]).items():
        assert abs(evaluated["metrics"][metric] - value) < 1e-4, metric
    assert scored["metrics"] == evaluate_run(qrels, given_run, ["nDCG@10"])

    assert "no index named '../sci'" in error_text(results[6])
    assert "between 1 and 50" in error_text(results[7])
    assert "k" in error_text(results[8])
    assert "no qrels split '../../etc/passwd'" in error_text(results[9])

    lucene = LuceneBM25(bm25_dir, BM25Config())
    both = reciprocal_rank_fusion([sci.search([QUERY], depth), lucene.search({"0": QUERY}, depth)], depth=10)["0"]
    default_fused = structured(results[10])
    assert default_fused["sources"] == [{"index": "sci", "mode": "dense"}, {"index": "sci", "mode": "bm25"}]
    assert [h["docid"] for h in default_fused["hits"]] == list(both)


def leaves(error: BaseException) -> list[BaseException]:
    nested = getattr(error, "exceptions", None)
    return [leaf for inner in nested for leaf in leaves(inner)] if nested else [error]


def test_streamable_http_refuses_a_wrong_token(server: RunningServer) -> None:
    import pytest
    from mcp import MCPError

    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "t", "version": "0"}}}
    with httpx.Client(base_url=server.url) as client:
        refused = client.post("/mcp", json=initialize, headers={"Authorization": "Bearer wrong-token-0123456789",
                                                                "Accept": "application/json, text/event-stream"})
        accepted = client.post("/mcp", json=initialize, headers={**server.auth,
                                                                 "Accept": "application/json, text/event-stream"})
    assert refused.status_code == 401 and set(refused.json()) == {"error", "request_id"}
    assert accepted.status_code == 200 and accepted.json()["result"]["serverInfo"]["name"] == "sbmoe"
    with pytest.raises(BaseException) as failed:  # noqa: B017 - the client wraps its error in task groups
        over_http(server, [("list_indexes", {})], token="wrong-token-0123456789")
    assert any(isinstance(leaf, MCPError) for leaf in leaves(failed.value)), failed.value
