"""``sbmoe serve``: load the indexes, then answer HTTP (uvicorn) or MCP over stdio until told to stop.

SIGTERM drains: uvicorn stops accepting, lets requests in flight finish, and the process exits 0. SIGHUP
reloads every index folder. The listening socket is bound here, before uvicorn starts, so a taken port is a
one-line error and ``--port 0`` gets a free port that the start-up line names.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

from .auth import check_bind, load_token
from .config import ServeConfig
from .controller import SearchController

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); an address in use or not ours is a ValueError (one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets' connections, and without it
    # Nagle's algorithm holds each response body back for the client's delayed ACK (40 ms a request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, config: ServeConfig) -> Any:
    """uvicorn settings: our own access log and errors, URL + headers bounded like bodies, a drain limit."""
    import uvicorn

    return uvicorn.Config(app, log_config=None, access_log=False, server_header=False, lifespan="on",
                          http="h11",  # h11 bounds the request line and headers (httptools, if installed, does not)
                          h11_max_incomplete_event_size=config.limits.max_body_bytes,
                          timeout_graceful_shutdown=int(config.limits.request_timeout_s) + 5,
                          timeout_keep_alive=5)


def configure_access_log(enabled: bool) -> None:
    """One line per request on stderr, whatever the root log level (the CLI's default is WARNING)."""
    access = logging.getLogger("sbmoe.serving.access")
    access.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled and not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        access.addHandler(handler)
        access.propagate = False


def require_serving_packages() -> None:
    """The serve extra's packages, or one line saying how to install them."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "mcp") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"sbmoe serve needs {', '.join(missing)}: pip install 'sbmoe[serve]'")


def serve(config: ServeConfig) -> None:
    """Run the server until SIGTERM (HTTP) or the end of stdin (MCP over stdio)."""
    require_serving_packages()
    config.limits.check()
    config.batch.check()
    token = load_token(config.token_file)
    if not config.mcp_stdio:
        check_bind(config.host, token)
        sock = bind(config.host, config.port)  # before loading: a taken port fails in a second, not a minute
    try:
        controller = SearchController(config.indexes, config.limits, config.batch).load()
    except BaseException:
        if not config.mcp_stdio:
            sock.close()
        raise
    names = ", ".join(f"{name} ({served.meta.count} docs)" for name, served in controller.served.items())
    if config.mcp_stdio:
        import anyio

        from .mcp_server import build_mcp

        print(f"sbmoe serve: MCP over stdio, indexes {names}", file=sys.stderr, flush=True)
        anyio.run(build_mcp(controller, own_lifecycle=True).run_stdio_async)
        return
    import uvicorn

    from .app import create_app

    configure_access_log(config.access_log)
    server = uvicorn.Server(uvicorn_config(create_app(controller, config, token), config))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"sbmoe serve: listening on http://{shown}:{port} (indexes {names}; "
          f"{'bearer token required' if token else 'no token: loopback only'})", file=sys.stderr, flush=True)
    # uvicorn re-raises the SIGTERM it drained on; ours then returns, so a drained shutdown exits 0
    previous = signal.signal(signal.SIGTERM, lambda *_: logger.warning("drained; exiting"))
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
