"""The front door every HTTP request passes (REST and MCP alike), as plain ASGI middleware.

In order: a request id (the client's ``X-Request-ID`` when it is sane, else a new one, echoed in the
response); a URL that is valid UTF-8; the bearer token when one is set; the body read whole before any route
sees it, bounded in size (413) and in how long each piece may take to arrive (408, a stalled client); then
the app, with any exception it raises answered as a one-line 500 and logged here with its traceback. Each
request leaves one access-log line and its metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from .auth import PUBLIC_PATHS, bearer_matches
from .config import Limits
from .errors import one_line
from .metrics import ServeMetrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sbmoe.serving.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def error_body(message: str, request_id: str) -> bytes:
    """The one-line JSON body of every error: {"error": ..., "request_id": ...}."""
    return json.dumps({"error": one_line(message), "request_id": request_id}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def request_id_of(scope: Scope) -> str:
    return scope.get("state", {}).get("request_id", "-")


class FrontDoor:
    """Request ids, UTF-8 URLs, the bearer token, bounded bodies, one-line errors, access log, metrics."""

    def __init__(self, app: Any, limits: Limits, token: str | None, metrics: ServeMetrics,
                 access_log: bool = True) -> None:
        self.app = app
        self.limits = limits
        self.token = token
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which no route accepts)
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given_id = headers.get("x-request-id", "")
        request_id = given_id if REQUEST_ID.match(given_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        response: dict[str, Any] = {"status": 0, "started": False}
        self.metrics.in_flight += 1

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"], response["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await self._reply(send_with_id, request_id, *refusal)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read_body(headers, receive)
                if refusal is not None:
                    await self._reply(send_with_id, request_id, *refusal, close=True)
                    return
                if body is None:  # the client went away
                    return
                receive = self._replay(body, receive)
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if not response["started"]:
                await self._reply(send_with_id, request_id, 500, "internal error; the server log has the details "
                                  f"under request id {request_id}")
        finally:
            self.metrics.in_flight -= 1
            self._record(scope, request_id, response["status"], time.perf_counter() - started)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) when the URL or the credentials already decide the answer."""
        for part, what in ((scope.get("raw_path") or b"", "path"), (scope.get("query_string") or b"", "query string")):
            try:
                unquote_to_bytes(part).decode("utf-8")
            except UnicodeDecodeError:
                return 400, f"the {what} is not valid UTF-8", {}
        if self.token is not None and scope["path"] not in PUBLIC_PATHS:
            authorization = headers.get("authorization")
            if not authorization:
                return 401, "this server needs a bearer token (Authorization: Bearer TOKEN)", \
                    {"www-authenticate": "Bearer"}
            if not bearer_matches(authorization, self.token):
                return 401, "wrong bearer token", {"www-authenticate": 'Bearer error="invalid_token"'}
        return None

    async def _read_body(self, headers: dict[str, str], receive: Receive
                         ) -> tuple[bytes | None, tuple[int, str, dict[str, str]] | None]:
        """The whole body, or the refusal: too large (413) or stalled (408). (None, None): client gone."""
        limit = self.limits.max_body_bytes
        too_large = (413, f"the request body is larger than {limit} bytes (--max-body-bytes)", {})
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return None, (400, "invalid Content-Length", {})
            if int(declared) > limit:
                return None, too_large
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except TimeoutError:
                return None, (408, f"the request body stalled: nothing arrived for {self.limits.body_timeout_s:g} s "
                              "(--body-timeout)", {})
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None, too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """A receive that hands the app the body already read, then the client's later messages."""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    async def _reply(send: Send, request_id: str, status: int, message: str, extra: dict[str, str] | None = None,
                     close: bool = False) -> None:
        body = error_body(message, request_id)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        if close:  # the unread rest of the body makes the connection unusable
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.requests.inc(method=scope["method"], route=route, status=str(status))
        self.metrics.latency.observe(seconds, route=route)
        if self.access_log:
            client = scope.get("client") or ("-", 0)
            path = (scope.get("raw_path") or scope["path"].encode()).decode("ascii", "backslashreplace")
            access_logger.info('%s %s "%s %s" %d %.1fms', client[0], request_id, scope["method"], path[:200],
                               status, seconds * 1000)
