"""The HTTP endpoints: Anserini's REST API (``/api/v1.0/indexes...``, so its clients work unchanged), and
sbmoe's own batched search, reload, health and metrics. Each route only translates; the controller works."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from .controller import SearchController

API = "/api/v1.0"


class AnseriniQuery(BaseModel):
    text: str
    qid: str


class Candidate(BaseModel):
    docid: str
    score: float
    doc: dict[str, str] | None = Field(description="title and text; null when the corpus is not on the server")


class AnseriniHits(BaseModel):
    """Anserini's search response (its ``-outputRerankerRequests`` JSON)."""

    query: AnseriniQuery
    candidates: list[Candidate]


class Document(BaseModel):
    docid: str
    doc: dict[str, str]


class IndexStatus(BaseModel):
    cached: bool
    generation: int
    loaded_at: str
    count: int


class IndexFacts(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    indexName: str  # noqa: N815 - Anserini's key
    cached: bool
    description: str
    model: str
    corpus: str | None
    model_fingerprint: str
    index_type: str = Field(description="faiss factory string: Flat, HNSW32,Flat, IVF1024,PQ48x8, ...")
    count: int
    dim: int
    backend: str
    modes: list[str]
    texts: bool = Field(description="whether hits carry titles and texts")
    generation: int
    loaded_at: str


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    qid: str | None = None


class SearchRequest(BaseModel):
    """Several queries in one request; each a string, or {"qid", "text"}."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str | QueryIn] = Field(description="query texts (ids 0, 1, ... unless given)")
    k: int = Field(10, description="hits per query")
    mode: Literal["dense", "bm25", "hybrid"] = "dense"


class PyseriniSearch(BaseModel):
    """pyserini's REST search body (its ``SearchParams``): one query, answered in Anserini's shape. The options
    that pick another encoder or query generator cannot apply to an index built with one model: null only."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="the query text")
    hits: int = Field(10, description="how many hits")
    qid: str = Field("", description="echoed back in the response")
    ef_search: int | None = Field(None, description="accepted and ignored: the index keeps its own efSearch")
    encoder: None = Field(None, description="must be null: the index's own model encodes")
    query_generator: None = None
    instruction_config: None = None


class Hit(BaseModel):
    rank: int
    docid: str
    score: float
    title: str | None
    snippet: str | None


class QueryHits(BaseModel):
    qid: str
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    index: str
    mode: str
    k: int
    results: list[QueryHits]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: str | None = Field(None, description="the index to reload; all when left out")


class ReloadResponse(BaseModel):
    reloaded: dict[str, int] = Field(description="index name -> its new generation")


def build_router(controller: SearchController) -> APIRouter:
    router = APIRouter()
    index_name = Path(..., description="an index name from GET /api/v1.0/indexes", max_length=200)

    @router.get(f"{API}/indexes", response_model=dict[str, IndexFacts], tags=["indexes"])
    async def list_indexes() -> dict[str, Any]:
        """Every served index and its facts, by name (Anserini's mapping)."""
        return controller.indexes()

    @router.get(f"{API}/indexes/{{name}}", response_model=IndexFacts, tags=["indexes"])
    async def index_facts(name: str = index_name) -> dict[str, Any]:
        """One index's facts: model, fingerprint, index type, size, backend."""
        return controller.get(name).facts()

    async def anserini_hits(name: str, query: str, hits: int, qid: str, mode: str) -> dict[str, Any]:
        """One query in Anserini's shape; each candidate carries the whole document."""
        served, _, _, run = await controller.run(name, [(qid or None, query)], hits, mode)
        ranked = run.get(qid or "0", {})
        candidates = [{"docid": h["docid"], "score": h["score"],
                       "doc": None if h["text"] is None else {"title": h["title"] or "", "text": h["text"]}}
                      for h in controller.hit_list(served, ranked, full_text=True)]
        return {"query": {"text": query, "qid": qid}, "candidates": candidates}

    @router.get(f"{API}/indexes/{{name}}/search", response_model=AnseriniHits, tags=["search"])
    async def anserini_search(name: str = index_name, query: str = Query(..., description="the query text"),
                              hits: int = Query(10, description="how many hits"),
                              qid: str = Query("", description="echoed back in the response"),
                              mode: Literal["dense", "bm25", "hybrid"] = Query("dense")) -> dict[str, Any]:
        """One query, answered in Anserini's shape; each candidate carries the whole document."""
        return await anserini_hits(name, query, hits, qid, mode)

    @router.post(f"{API}/indexes/{{name}}/search", response_model=SearchResponse | AnseriniHits, tags=["search"])
    async def batch_search(body: SearchRequest | PyseriniSearch, name: str = index_name) -> dict[str, Any]:
        """Several queries at once (``{"queries": [...], "k", "mode"}``), hits with title and snippet; or pyserini's
        body (``{"query", "hits", "qid"}``), answered in Anserini's shape as the GET search is."""
        if isinstance(body, PyseriniSearch):
            return await anserini_hits(name, body.query, body.hits, body.qid, "dense")
        queries = [(None, q) if isinstance(q, str) else (q.qid, q.text) for q in body.queries]
        return await controller.search(name, queries, body.k, body.mode)

    @router.get(f"{API}/indexes/{{name}}/documents/{{docid:path}}", response_model=Document, tags=["indexes"])
    async def document(name: str = index_name, docid: str = Path(..., max_length=1000)) -> dict[str, Any]:
        """One document's title and text, by id."""
        return {"docid": docid, "doc": controller.document(name, docid)}

    @router.get(f"{API}/indexes/{{name}}/status", response_model=IndexStatus, tags=["indexes"])
    async def status(name: str = index_name) -> dict[str, Any]:
        """Whether the index is loaded (Anserini's ``cached``), its generation and size."""
        facts = controller.get(name).facts()
        return {"cached": True, "generation": facts["generation"], "loaded_at": facts["loaded_at"],
                "count": facts["count"]}

    @router.post("/admin/reload", response_model=ReloadResponse, tags=["admin"])
    async def reload(body: ReloadRequest | None = None) -> dict[str, Any]:
        """Load index folders again and swap them in (409 and the old index serving if a folder is damaged)."""
        return {"reloaded": await controller.reload(body.index if body else None)}

    @router.get("/healthz", tags=["admin"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the server answers and how many indexes it serves (needs no token)."""
        return {"status": "ok", "indexes": len(controller.served)}

    @router.get("/metrics", response_class=PlainTextResponse, tags=["admin"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latency, batch sizes, queue depth, reloads."""
        return PlainTextResponse(controller.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
