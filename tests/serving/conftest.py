"""A real ``sbmoe serve`` app on a free loopback port for the serving tests, over small indexes of the
50-document SciFact slice encoded with the tiny random BERT; stopped (and its port closed) at teardown."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789abcdef"


def build_tiny_index(tiny_bert_dir: Path, dataset: Path, output: Path, factory: str = "Flat") -> Path:
    from sbmoe.index.builder import IndexConfig, build_index
    from sbmoe.models.encoder import EncoderConfig

    build_index(IndexConfig(dataset=str(dataset), output=output, factory=factory, show_progress=False,
                            use_cache=False, encoder=EncoderConfig(model=str(tiny_bert_dir), batch_size=16)))
    return output


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory: pytest.TempPathFactory, scifact_slice: Path) -> Path:
    """The 50-document slice, and a 30-document variant (a 'rebuilt' corpus for reload tests)."""
    root = tmp_path_factory.mktemp("serve-data")
    shutil.copytree(scifact_slice, root / "scifact50")
    smaller = root / "scifact30"
    shutil.copytree(scifact_slice, smaller)
    lines = (smaller / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    (smaller / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_indexes(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, serve_data: Path) -> dict[str, Path]:
    """Pristine index folders (never served directly): 50 docs Flat, 50 docs HNSW, 30 docs Flat."""
    root = tmp_path_factory.mktemp("serve-indexes")
    return {"flat50": build_tiny_index(tiny_bert_dir, serve_data / "scifact50", root / "flat50"),
            "hnsw50": build_tiny_index(tiny_bert_dir, serve_data / "scifact50", root / "hnsw50", "HNSW16,Flat"),
            "flat30": build_tiny_index(tiny_bert_dir, serve_data / "scifact30", root / "flat30")}


@pytest.fixture(scope="session")
def bm25_dir(tmp_path_factory: pytest.TempPathFactory, serve_data: Path) -> Path:
    """A Lucene index of the 50-document slice (modes bm25 and hybrid of index "sci")."""
    from sbmoe.bm25.engines import LuceneBM25
    from sbmoe.data import BeirDataset

    return LuceneBM25.build(BeirDataset.open(serve_data / "scifact50"), tmp_path_factory.mktemp("bm25") / "lucene")


def free_loopback_socket() -> socket.socket:
    from sbmoe.serving.server import bind

    return bind("127.0.0.1", 0)


def port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class RunningServer:
    url: str
    port: int
    controller: object
    folders: dict[str, Path]
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_indexes: dict[str, Path],
           bm25_dir: Path) -> Iterator[RunningServer]:
    """``sbmoe serve`` (the same app and uvicorn settings as the CLI's) in a thread, with a token and small
    limits; two indexes ("sci" with BM25), each served from a copy the tests may rebuild or damage."""
    import uvicorn

    from sbmoe.serving.app import create_app
    from sbmoe.serving.config import BatchConfig, IndexSpec, Limits, ServeConfig
    from sbmoe.serving.controller import SearchController
    from sbmoe.serving.server import uvicorn_config

    served = tmp_path_factory.mktemp("served")
    folders = {"sci": served / "sci", "hnsw": served / "hnsw"}
    shutil.copytree(tiny_indexes["flat50"], folders["sci"])
    shutil.copytree(tiny_indexes["hnsw50"], folders["hnsw"])
    limits = Limits(max_body_bytes=256 * 1024, max_query_tokens=64, max_queries=8, max_k=50, request_timeout_s=20,
                    body_timeout_s=0.5, max_queue=4)
    config = ServeConfig(indexes=[IndexSpec("sci", folders["sci"], bm25_dir), IndexSpec("hnsw", folders["hnsw"])],
                         limits=limits,
                         batch=BatchConfig(max_batch=8, max_wait_ms=2))
    controller = SearchController(config.indexes, limits, config.batch).load()
    uvicorn_server = uvicorn.Server(uvicorn_config(create_app(controller, config, TOKEN), config))
    sock = free_loopback_socket()
    port = sock.getsockname()[1]
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", port, controller, folders, TOKEN)
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop"
        assert port_is_closed(port), f"something still listens on 127.0.0.1:{port}"
