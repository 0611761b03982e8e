"""What ``sbmoe serve`` serves and the bounds it puts on every request: each default is defined here, once.

Torch-free (the CLI reads its option defaults from these dataclasses at start-up).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "SBMOE_SERVE_TOKEN"  # the environment variable a bearer token is read from (never a flag)
MODES = ("dense", "bm25", "hybrid")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # index names appear in URLs


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; a request past one gets a 4xx (or 503) with one line, never a crash."""

    max_body_bytes: int = 1 << 20  # request body (and URL + headers), bytes
    max_query_tokens: int = 512  # tokens of one query under the index's tokenizer
    max_queries: int = 64  # queries in one POST search
    max_k: int = 1000  # hits per query
    request_timeout_s: float = 30.0  # from a complete request to its answer
    body_timeout_s: float = 10.0  # longest wait for the next piece of a request body (a stalled client)
    max_queue: int = 256  # requests waiting for the encoder; more get 503 with Retry-After
    max_eval_queries: int = 10_000  # queries the MCP evaluate tool runs or scores in one call

    def check(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"--{name.replace('_', '-').removesuffix('-s')} must be positive, got {value}")


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching: concurrent queries share one encoder pass (and one FAISS search per k)."""

    max_batch: int = 32  # queries per encoder pass
    max_wait_ms: float = 2.0  # how long a batch waits for requests already inside the server
    hybrid_depth: int = 100  # hits each mode contributes before reciprocal-rank fusion

    def check(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.hybrid_depth < 1:
            raise ValueError(f"--max-batch must be positive and --max-wait-ms not negative, got {self.max_batch} "
                             f"and {self.max_wait_ms:g}")


@dataclass(frozen=True)
class IndexSpec:
    """One served index: a dense index folder under a name, and optionally the BM25 folder of its corpus."""

    name: str
    path: Path
    bm25_path: Path | None = None


@dataclass
class ServeConfig:
    """Arguments of ``sbmoe serve``."""

    indexes: list[IndexSpec] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    token_file: Path | None = None
    mcp_stdio: bool = False  # MCP over stdin/stdout instead of HTTP (HTTP serves MCP at /mcp too)
    limits: Limits = field(default_factory=Limits)
    batch: BatchConfig = field(default_factory=BatchConfig)
    access_log: bool = True


def split_name(spec: str) -> tuple[str | None, str]:
    """``NAME=DIR`` -> (NAME, DIR); a bare ``DIR`` -> (None, DIR)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and "\\" not in name:
        return name, path
    return None, spec


def index_specs(dense: list[str], bm25: list[str] | None = None) -> list[IndexSpec]:
    """``--index [NAME=]DIR`` and ``--bm25 [NAME=]DIR`` options -> index specs; a name defaults to the folder's.

    A BM25 folder without a name belongs to the only dense index; names must be unique and URL-safe.
    """
    if not dense:
        raise ValueError("give at least one --index [NAME=]DIR")
    specs: dict[str, IndexSpec] = {}
    for raw in dense:
        name, path = split_name(raw)
        name = name or Path(path).resolve().name
        if not NAME_PATTERN.match(name):
            raise ValueError(f"index name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
                             "e.g. --index scifact=DIR")
        if name in specs:
            raise ValueError(f"index name {name!r} given twice; name them with --index NAME=DIR")
        specs[name] = IndexSpec(name, Path(path))
    for raw in bm25 or []:
        name, path = split_name(raw)
        if name is None:
            if len(specs) != 1:
                raise ValueError("with several --index folders, name the dense index of each --bm25: NAME=DIR")
            name = next(iter(specs))
        if name not in specs:
            raise ValueError(f"--bm25 {raw}: no --index named {name!r} (names: {', '.join(specs)})")
        if specs[name].bm25_path is not None:
            raise ValueError(f"--bm25 given twice for index {name!r}")
        specs[name] = IndexSpec(name, specs[name].path, Path(path))
    return list(specs.values())


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
