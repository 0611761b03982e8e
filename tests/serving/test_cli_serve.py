"""``sbmoe serve`` as a user runs it: bad start-up input is one ``error:`` line; ``sbmoe serve --mcp`` answers
an MCP client over stdio; a real HTTP server process on a free loopback port reloads on SIGHUP and, on
SIGTERM, finishes the request in flight and exits 0.

The HTTP process starts in a module fixture that the stdio test also requests, so the two processes load
torch and the model at the same time instead of one after the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cli_errors import fails_with_one_line, runner

from sbmoe.cli import app

from .conftest import port_is_closed
from .mcp_helpers import TOOLS, call_all, error_text, structured

TOKEN = "cli-token-0123456789abcdef"
QUERY = "does aspirin prevent heart attacks?"


def test_start_up_errors_are_one_line(tiny_indexes: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_indexes["flat50"]
    monkeypatch.delenv("SBMOE_SERVE_TOKEN", raising=False)
    line = fails_with_one_line("serve", "--index", folder, "--host", "0.0.0.0", "--port", 0)
    assert "reachable from other machines" in line and "--token-file" in line
    assert "not found" in fails_with_one_line("serve", "--index", tmp_path / "missing", "--port", 0)
    assert "no such file" in fails_with_one_line("serve", "--index", folder, "--token-file", tmp_path / "none")
    (tmp_path / "short").write_text("abc\n")
    assert "at least 16 characters" in fails_with_one_line("serve", "--index", folder, "--token-file",
                                                           tmp_path / "short")
    monkeypatch.setenv("SBMOE_SERVE_TOKEN", "has space in it 0123456789")
    assert "one word" in fails_with_one_line("serve", "--index", folder)
    monkeypatch.delenv("SBMOE_SERVE_TOKEN")
    assert "given twice" in fails_with_one_line("serve", "--index", f"a={folder}", "--index", f"a={folder}")
    assert "index name" in fails_with_one_line("serve", "--index", f"bad name={folder}")
    assert "no --index named 'b'" in fails_with_one_line("serve", "--index", f"a={folder}", "--bm25", "b=x")
    assert "--max-k must be positive" in fails_with_one_line("serve", "--index", folder, "--max-k", 0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in fails_with_one_line("serve", "--index", folder, "--port",
                                                                           port)
    assert "--token" not in runner.invoke(app, ["serve", "--help"]).output.replace("--token-file", "")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    folder: Path
    started: float

    def port(self) -> int:
        """Wait for the start-up line and return the port it names."""
        deadline = self.started + 180
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
            if not line and self.process.poll() is not None:
                break
        pytest.fail(f"sbmoe serve did not start: {self.process.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def http_process(tiny_indexes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``sbmoe serve --index sci=COPY --port 0`` with a token from the environment; killed if still running."""
    import shutil

    root = tmp_path_factory.mktemp("cli-serve")
    folder = root / "sci"
    shutil.copytree(tiny_indexes["flat50"], folder)
    env = {**os.environ, "SBMOE_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "SBMOE_SERVE_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "sbmoe.cli", "serve", "--index", f"sci={folder}",
                                "--port", "0", "--host", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield ServerProcess(process, folder, time.monotonic())
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def test_tools_over_stdio(tiny_indexes: dict[str, Path], isolated_cache: Path, http_process: ServerProcess) -> None:
    """``sbmoe serve --mcp``: an MCP client starts it and talks over its stdin and stdout."""
    from mcp import Client, StdioServerParameters

    from sbmoe.index.retriever import Retriever

    folder = tiny_indexes["flat50"]
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sbmoe.cli", "serve", "--mcp", "--index", f"tiny={folder}"],
        env={"SBMOE_CACHE": str(isolated_cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONPATH": os.pathsep.join(sys.path)})

    async def session() -> tuple[set[str], list[Any]]:
        async with Client(params, read_timeout_seconds=120) as client:
            return await call_all(client, [("search", {"query": QUERY, "k": 5}), ("list_indexes", {}),
                                           ("get_document", {"docid": "no-such-doc"})])

    names, (searched, listing, missing) = asyncio.run(session())
    assert names == TOOLS
    expected = Retriever.from_index(folder).search([QUERY], k=5)["0"]
    hits = structured(searched)["hits"]
    assert [h["docid"] for h in hits] == list(expected)
    np.testing.assert_allclose([h["score"] for h in hits], list(expected.values()), rtol=1e-5, atol=1e-5)
    assert list(structured(listing)) == ["tiny"]
    assert "index 'tiny' has no document 'no-such-doc'" in error_text(missing)
    assert json.loads(searched.content[0].text)["hits"] == hits


def test_serve_reloads_on_sighup_and_drains_on_sigterm(http_process: ServerProcess,
                                                       tiny_indexes: dict[str, Path]) -> None:
    import shutil

    process, folder, port = http_process.process, http_process.folder, http_process.port()
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1.0/indexes").status_code == 401
        assert client.get("/api/v1.0/indexes/sci/status", headers=auth).json()["generation"] == 1
        shutil.rmtree(folder)
        shutil.copytree(tiny_indexes["flat30"], folder)
        process.send_signal(signal.SIGHUP)
        for _ in range(300):
            status = client.get("/api/v1.0/indexes/sci/status", headers=auth).json()
            if status["generation"] == 2:
                break
            time.sleep(0.05)
        assert status == {**status, "generation": 2, "count": 30}

    body = json.dumps({"queries": [QUERY], "k": 3}).encode()
    head = (f"POST /api/v1.0/indexes/sci/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head + body[:5])  # a request in flight: headers and part of the body
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.sendall(body[5:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])["results"][0]["hits"]) == 3
    assert process.wait(timeout=60) == 0
    logged = process.stderr.read()
    assert "Traceback" not in logged
    assert logged.count('"POST /api/v1.0/indexes/sci/search" 200') == 1  # one access-log line per request
    assert port_is_closed(port)
