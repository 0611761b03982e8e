"""The MCP skin over the controller: tools an LLM agent calls (search, get_document, list_indexes, fuse,
evaluate), built with the MCP library's ``MCPServer``; served over stdio (``sbmoe serve --mcp``) or
streamable HTTP at ``/mcp`` behind the HTTP server's token.

Each tool's schema comes from its annotated signature; an error reaches the agent as one line it can act on
(which index names exist, which limit it crossed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from pydantic import Field

from ..runs import Run
from .controller import SearchController
from .errors import RequestError, one_line

logger = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
INSTRUCTIONS = ("Search the document collections this server holds. Call list_indexes first for their names, "
                "models and modes; search returns ranked hits with titles and snippets; get_document returns "
                "a hit's whole text; fuse merges rankings; evaluate scores a run against the corpus's qrels.")


def build_mcp(controller: SearchController, own_lifecycle: bool = False) -> Any:
    """An ``MCPServer`` whose tools call ``controller``; with ``own_lifecycle`` (stdio) it starts and stops
    the controller's batcher itself, otherwise the HTTP app does."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import CallToolResult, TextContent

    from ..version import __version__

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()

    async def one_line_tool_errors(ctx: Any, call_next: Any) -> Any:
        """Argument-validation errors arrive as pydantic's multi-line text; an agent gets one line."""
        result = await call_next(ctx)
        if isinstance(result, CallToolResult) and result.is_error:
            result.content = [TextContent(type="text", text=one_line(c.text)) if isinstance(c, TextContent) else c
                              for c in result.content]
        elif isinstance(result, dict) and result.get("isError"):  # the wire form of a tool result
            result["content"] = [{**c, "text": one_line(c["text"])} if c.get("type") == "text" else c
                                 for c in result.get("content", [])]
        return result

    server = MCPServer("sbmoe", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING",
                       lifespan=lifespan if own_lifecycle else None, middleware=[one_line_tool_errors])

    def index_or_default(index: str | None) -> str:
        return index or controller.default_index()

    async def guarded(work: Any) -> Any:
        try:
            return await work
        except RequestError as exc:
            raise ToolError(exc.message) from None

    @server.tool()
    async def list_indexes() -> dict[str, Any]:
        """Every index this server holds, by name: model, index type, document count, search modes."""
        return controller.indexes()

    @server.tool()
    async def search(
        query: Annotated[str, Field(description="the query text")],
        index: Annotated[str | None, Field(description="index name (default: the first one)")] = None,
        k: Annotated[int, Field(description="how many hits")] = 10,
        mode: Annotated[Mode, Field(description="dense, bm25, or hybrid (reciprocal-rank fusion of both)")] = "dense",
    ) -> dict[str, Any]:
        """Ranked documents for a query: doc id, score, title and a snippet of each."""
        found = await guarded(controller.search(index_or_default(index), [(None, query)], k, mode))
        return {"index": found["index"], "mode": mode, "query": query, "hits": found["results"][0]["hits"]}

    @server.tool()
    async def get_document(
        docid: Annotated[str, Field(description="a doc id from search hits")],
        index: Annotated[str | None, Field(description="index name (default: the first one)")] = None,
    ) -> dict[str, Any]:
        """The whole title and text of one document."""
        name = index_or_default(index)
        document = await guarded(_now(controller.document, name, docid))
        return {"index": name, "docid": docid, **document}

    @server.tool()
    async def fuse(
        query: Annotated[str, Field(description="the query text")],
        indexes: Annotated[list[str] | None, Field(description="indexes to fuse (default: the first one)")] = None,
        modes: Annotated[list[Mode] | None, Field(description="modes run on each index (default: dense, and "
                                                      "bm25 where the index has it)")] = None,
        k: Annotated[int, Field(description="how many fused hits")] = 10,
    ) -> dict[str, Any]:
        """Reciprocal-rank fusion (k=60) of one query's rankings from every (index, mode) pair."""
        names = indexes or [controller.default_index()]

        def modes_of(name: str) -> list[str]:
            if modes:
                return list(modes)
            return [m for m in controller.get(name).facts()["modes"] if m != "hybrid"]

        return await guarded(_sources_then_fuse(controller, query, names, modes_of, k))

    @server.tool()
    async def evaluate(
        index: Annotated[str | None, Field(description="index name (default: the first one)")] = None,
        split: Annotated[str | None, Field(description="qrels split, e.g. test (default: the dataset's)")] = None,
        metrics: Annotated[list[str] | None, Field(description="ir-measures names, e.g. nDCG@10, R@100")] = None,
        run: Annotated[dict[str, dict[str, float]] | None,
                       Field(description="{query id: {doc id: score}} to score; left out: the index's own "
                             "search of the split's judged queries")] = None,
        mode: Annotated[Mode, Field(description="search mode when no run is given")] = "dense",
        k: Annotated[int, Field(description="hits per query when no run is given")] = 100,
    ) -> dict[str, Any]:
        """Score a run against the qrels of the corpus the index was built from (mean over judged queries)."""
        given: Run | None = run
        return await guarded(controller.evaluate(index_or_default(index), split, metrics, given, mode, k))

    return server


async def _sources_then_fuse(controller: SearchController, query: str, names: list[str], modes_of: Any,
                             k: int) -> dict[str, Any]:
    """Resolve the (index, mode) pairs (an unknown index is the same one-line error as elsewhere), then fuse."""
    return await controller.fuse(query, [(name, mode) for name in names for mode in modes_of(name)], k)


async def _now(func: Any, *args: Any) -> Any:
    """A synchronous controller call as an awaitable, so ``guarded`` treats every tool alike."""
    return func(*args)
