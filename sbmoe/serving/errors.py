"""The errors a request can meet, each with its HTTP status: REST turns them into a one-line JSON body, MCP
into a one-line tool error."""

from __future__ import annotations

MAX_MESSAGE = 400  # characters of an error line sent to a client


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """A message flattened to one line and cut to ``limit`` characters (never a stack trace)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class RequestError(Exception):
    """A request the server refuses or cannot answer; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None, retry_after: int | None = None) -> None:
        super().__init__(one_line(message))
        self.message = one_line(message)
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class NotFound(RequestError):
    status = 404


class Overloaded(RequestError):
    """The encoder's queue is full or the request ran past its time: 503 with Retry-After."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class ReloadRefused(RequestError):
    """A rebuilt folder failed to load or to answer a probe query; the old index keeps serving."""

    status = 409
