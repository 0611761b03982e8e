"""Who may use the server: loopback by default; any other address only with a bearer token.

The token comes from a file or the ``SBMOE_SERVE_TOKEN`` environment variable, never from the command line
(where ``ps`` would show it), and is compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

from .config import TOKEN_ENV, is_loopback

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz"})  # a liveness probe reveals nothing; every other path needs the token
MIN_TOKEN_CHARS = 16


def load_token(token_file: Path | None) -> str | None:
    """The bearer token from ``token_file``, else from $SBMOE_SERVE_TOKEN, else None (no token)."""
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file {path}: no such file")
        token = path.read_text(encoding="utf-8").strip()
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by other users; chmod 600 it", path)
        source = str(path)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"the token in {source} must be one word of at least {MIN_TOKEN_CHARS} characters "
                         "(e.g. the output of `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`)")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines: set a bearer token first "
                         f"(--token-file FILE or ${TOKEN_ENV}), or keep the default --host 127.0.0.1")


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization: Bearer ...`` header carries ``token`` (constant-time comparison)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
