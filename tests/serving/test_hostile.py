"""Hostile requests: each gets its documented status and one line of JSON ({"error", "request_id"}), never a
stack trace, and the server keeps answering with the same hits as before the suite (the last test)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from .conftest import RunningServer

QUERY = "does aspirin prevent heart attacks?"
SEARCH = "/api/v1.0/indexes/sci/search"


@pytest.fixture(scope="module")
def hits_before(server: RunningServer) -> list[dict]:
    return search_hits(server)


def search_hits(server: RunningServer) -> list[dict]:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        response = client.post(SEARCH, json={"queries": [QUERY], "k": 10})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["hits"]


def assert_error_line(status: int, headers: dict[str, str], body: bytes, expected: int, *words: str) -> dict:
    """The status, a JSON body of one line with exactly error and request_id, no trace, the header's id."""
    assert status == expected, body[:300]
    assert headers["content-type"].startswith("application/json")
    text = body.decode("utf-8")
    assert "\n" not in text.strip() and "Traceback" not in text and 'File "' not in text
    parsed = json.loads(text)
    assert set(parsed) == {"error", "request_id"}
    assert parsed["request_id"] == headers["x-request-id"]
    for word in words:
        assert word in parsed["error"], parsed["error"]
    return parsed


def assert_error(response: httpx.Response, expected: int, *words: str) -> dict:
    return assert_error_line(response.status_code, dict(response.headers), response.content, expected, *words)


def raw_exchange(port: int, payload: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a raw loopback connection and read the answer (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(payload)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def request_head(server: RunningServer, method: str, target: str, extra: str = "") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.token}"
            f"\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_malformed_and_mistyped_bodies(server: RunningServer, hits_before: list[dict]) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        assert_error(client.post(SEARCH, content=b'{"queries": ["a", }', headers={"content-type": "application/json"}),
                     400, "malformed JSON")
        assert_error(client.post(SEARCH, content=b'{"queries": ["caf\xff"]}',
                                 headers={"content-type": "application/json"}), 400)
        assert_error(client.post(SEARCH, json={"queries": "not a list", "k": 3}), 400, "queries")
        assert_error(client.post(SEARCH, json={"queries": [QUERY], "k": "ten"}), 400, "k")
        assert_error(client.post(SEARCH, json={"queries": [QUERY], "mode": "telepathy"}), 400, "mode")
        assert_error(client.post(SEARCH, json={"queries": [QUERY], "surprise": 1}), 400, "surprise")
        assert_error(client.post(SEARCH, json={"queries": [{"qid": "a", "text": QUERY}, {"qid": "a", "text": "x"}]}),
                     400, "unique")
        assert_error(client.post(SEARCH, json={"queries": [QUERY] * 9}), 400, "9 queries", "--max-queries")
        assert_error(client.post(SEARCH, json={"queries": []}), 400, "at least one query")


def test_empty_huge_and_non_utf8_queries(server: RunningServer) -> None:
    huge = "cell " * 20_000  # 100,000 characters
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        assert_error(client.post(SEARCH, json={"queries": ["   "]}), 400, "query 0 is empty")
        assert_error(client.get(SEARCH, params={"query": ""}), 400, "empty")
        assert_error(client.post(SEARCH, json={"queries": [QUERY, huge]}), 400, "query 1", "64 tokens")
        just_over = " ".join(["cell"] * 65)  # short in characters, but over the limit in tokens
        assert_error(client.post(SEARCH, json={"queries": [just_over]}), 400, "64 tokens")
        assert client.post(SEARCH, json={"queries": [" ".join(["cell"] * 60)]}).status_code == 200
    status, headers, body = raw_exchange(server.port, request_head(server, "GET", f"{SEARCH}?query=caf%FF%FE"))
    assert_error_line(status, headers, body, 400, "not valid UTF-8")
    # a 100,000-character query in Anserini's GET form (too long a URL for httpx, so on a raw connection)
    status, headers, body = raw_exchange(server.port, request_head(server, "GET", f"{SEARCH}?query={'cell+' * 20_000}"))
    assert_error_line(status, headers, body, 400, "longer than 64 tokens")


def test_k_out_of_bounds(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        assert_error(client.post(SEARCH, json={"queries": [QUERY], "k": 10**9}), 400, "between 1 and 50",
                     "1000000000")
        assert_error(client.post(SEARCH, json={"queries": [QUERY], "k": 0}), 400, "between 1 and 50")
        assert_error(client.get(SEARCH, params={"query": QUERY, "hits": 10**9}), 400, "between 1 and 50")
        assert_error(client.get(SEARCH, params={"query": QUERY, "hits": 10**30}), 400, "between 1 and 50")


def test_unknown_index_and_paths_out_of_the_index_set(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        assert_error(client.get("/api/v1.0/indexes/nope/search", params={"query": QUERY}), 404, "no index named",
                     "sci")
        for target in ("/api/v1.0/indexes/..%2F..%2Fetc%2Fpasswd/search", "/api/v1.0/indexes/%2E%2E/status",
                       "/api/v1.0/indexes/..%2Fsci/documents/4983"):
            assert client.get(target, params={"query": QUERY}).status_code == 404
        assert_error(client.get("/api/v1.0/indexes/sci/documents/no-such-doc"), 404, "no document")
        assert_error(client.get("/api/v1.0/indexes/sci/documents/..%2F..%2Fmeta.json"), 404, "no document")
        assert_error(client.post("/admin/reload", json={"index": "../sci"}), 404, "no index named")
    for target in ("/api/v1.0/indexes/../../../etc/passwd", "/api/v1.0/indexes/sci/documents/../../../meta.json"):
        status, headers, body = raw_exchange(server.port, request_head(server, "GET", target))
        assert_error_line(status, headers, body, 404)


def test_missing_and_wrong_token(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        for path in (SEARCH + "?query=x", "/api/v1.0/indexes", "/metrics", "/docs", "/mcp"):
            missing = client.get(path)
            assert_error(missing, 401, "bearer token")
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert_error(client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}), 401, "wrong")
            assert_error(client.get(path, headers={"Authorization": f"Basic {server.token}"}), 401, "wrong")
        assert_error(client.post(SEARCH, json={"queries": [QUERY]}), 401)


def test_oversized_bodies(server: RunningServer) -> None:
    """A 50 MB body (declared, and actually sent) and a chunked body past the limit: 413."""
    head = request_head(server, "POST", SEARCH, f"Content-Length: {50 * 1024 * 1024}\r\n")
    status, headers, body = raw_exchange(server.port, head + b"x" * 65536)
    assert_error_line(status, headers, body, 413, "larger than 262144 bytes")
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        response = client.post(SEARCH, content=b" " * (50 * 1024 * 1024), headers={"content-type": "application/json"})
        assert_error(response, 413, "larger than")
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    head = request_head(server, "POST", SEARCH, "Transfer-Encoding: chunked\r\n")
    status, headers, body = raw_exchange(server.port, head + chunk * 20)
    assert_error_line(status, headers, body, 413, "larger than")


def test_client_that_stalls_mid_body(server: RunningServer) -> None:
    """Half a body, then silence: 408 once --body-timeout (0.5 s here) passes, and the connection closes."""
    body = json.dumps({"queries": [QUERY]}).encode()
    head = request_head(server, "POST", SEARCH, f"Content-Length: {len(body)}\r\n")
    status, headers, answer = raw_exchange(server.port, head + body[:10])
    assert_error_line(status, headers, answer, 408, "stalled", "0.5 s")
    assert headers.get("connection") == "close"


def test_internal_error_is_one_line_without_trace(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    served = server.controller.get("sci")

    def broken(texts):
        raise RuntimeError("secret detail\n  File \"/srv/x.py\", line 1")

    monkeypatch.setattr(served.retriever, "encode_queries", broken)
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        parsed = assert_error(client.post(SEARCH, json={"queries": [QUERY]}), 500, "internal error")
    assert "secret" not in parsed["error"] and parsed["request_id"] in parsed["error"]


def test_burst_beyond_the_queue_bound(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the encoder busy, 4 requests queue (--max-queue 4 here) and the rest get 503 with Retry-After at
    once; the queued ones are answered when the encoder frees up."""
    served = server.controller.get("sci")
    release, entered = threading.Event(), threading.Event()
    original = served.retriever.encode_queries

    def held(texts):
        entered.set()
        release.wait(10)
        return original(texts)

    monkeypatch.setattr(served.retriever, "encode_queries", held)
    responses: list[httpx.Response] = []

    def ask() -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
            responses.append(client.post(SEARCH, json={"queries": [QUERY], "k": 3}))

    first = threading.Thread(target=ask)
    first.start()
    assert entered.wait(10)
    burst = [threading.Thread(target=ask) for _ in range(10)]
    for thread in burst:
        thread.start()
    deadline = time.monotonic() + 10
    while len(responses) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in [first, *burst]:
        thread.join(30)
    refused = [r for r in responses if r.status_code == 503]
    answered = [r for r in responses if r.status_code == 200]
    assert len(refused) == 6 and len(answered) == 5
    for response in refused:
        assert_error(response, 503, "server busy")
        assert response.headers["retry-after"] == "1"


def test_search_past_the_time_limit(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search the encoder cannot start within --request-timeout gets 503 with Retry-After; the server moves on."""
    import dataclasses

    controller = server.controller
    monkeypatch.setattr(controller, "limits", dataclasses.replace(controller.limits, request_timeout_s=0.3))
    served = controller.get("sci")
    release = threading.Event()
    original = served.retriever.encode_queries

    def held(texts):
        release.wait(10)
        return original(texts)

    monkeypatch.setattr(served.retriever, "encode_queries", held)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        late = client.post(SEARCH, json={"queries": [QUERY]})
        release.set()
        assert_error(late, 503, "longer than 0.3 s", "--request-timeout")
        assert late.headers["retry-after"] == "1"
        monkeypatch.setattr(served.retriever, "encode_queries", original)
        assert client.post(SEARCH, json={"queries": [QUERY]}).status_code == 200


def test_still_serving_the_same_hits(server: RunningServer, hits_before: list[dict]) -> None:
    assert search_hits(server) == hits_before
