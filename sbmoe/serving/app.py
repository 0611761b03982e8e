"""The FastAPI application: the routes, MCP's streamable HTTP endpoint at ``/mcp``, the front door around
both, and the error handlers that turn every refusal into one line of JSON with the request id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..version import __version__
from .config import ServeConfig
from .controller import SearchController
from .errors import RequestError, one_line
from .mcp_server import build_mcp
from .middleware import FrontDoor, error_body, request_id_of
from .routes import build_router

logger = logging.getLogger(__name__)


def error_response(request: Request, status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    response = JSONResponse({}, status_code=status, headers=headers)
    response.body = error_body(message, request_id_of(request.scope))
    response.headers["content-length"] = str(len(response.body))
    return response


def validation_message(exc: RequestValidationError) -> str:
    """Pydantic's errors as one line: ``where: what`` for the first three."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")) or "body"
        what = "malformed JSON" if error.get("type") == "json_invalid" else error.get("msg", "invalid")
        parts.append(f"{where}: {what}")
    return "invalid request: " + "; ".join(parts)


def create_app(controller: SearchController, config: ServeConfig, token: str | None) -> FastAPI:
    """The app ``sbmoe serve`` runs (and tests start on a loopback port); ``controller`` is already loaded."""
    mcp = build_mcp(controller)
    mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                      host=config.host, max_request_body_size=config.limits.max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await controller.start()
        reload_on_hangup = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP")
        if reload_on_hangup:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_all(controller)))
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            if reload_on_hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await controller.stop()

    app = FastAPI(title="sbmoe serve", version=__version__, lifespan=lifespan,
                  description="Dense (and BM25, hybrid) search over sbmoe index folders; Anserini's REST API "
                  "under /api/v1.0, MCP at /mcp. Every error is one line of JSON: {error, request_id}.")
    app.include_router(build_router(controller))
    app.router.routes.extend(mcp_app.routes)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return error_response(request, exc.status_code, one_line(message))

    app.add_middleware(FrontDoor, limits=config.limits, token=token, metrics=controller.metrics,
                       access_log=config.access_log)
    return app


async def reload_all(controller: SearchController) -> None:
    """SIGHUP: reload every index; a refused folder is logged and its old generation keeps serving."""
    with contextlib.suppress(RequestError):
        await controller.reload()
