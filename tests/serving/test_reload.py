"""Reload without downtime: a rebuilt folder is swapped in while requests keep coming (none fails), and a
damaged folder is refused with 409 while the old index keeps answering with its old hits."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx

from .conftest import RunningServer

QUERY = "does aspirin prevent heart attacks?"


def replace_folder(target: Path, source: Path) -> None:
    """Put ``source``'s files at ``target`` the way a rebuild does: written beside it, renamed into place."""
    staged = target.with_name(target.name + ".new")
    shutil.copytree(source, staged)
    old = target.with_name(target.name + ".old")
    target.rename(old)
    staged.rename(target)
    shutil.rmtree(old)


def status(client: httpx.Client, name: str = "sci") -> dict:
    return client.get(f"/api/v1.0/indexes/{name}/status").json()


def hits(client: httpx.Client, name: str = "sci") -> list[str]:
    response = client.post(f"/api/v1.0/indexes/{name}/search", json={"queries": [QUERY], "k": 10})
    assert response.status_code == 200, response.text
    return [h["docid"] for h in response.json()["results"][0]["hits"]]


def test_rebuilt_folder_swaps_in_under_load(server: RunningServer, tiny_indexes: dict[str, Path]) -> None:
    """Three clients search without pause while the folder is rebuilt (50 -> 30 documents) and reloaded
    twice; every request succeeds, and after the reload hits come from the 30-document corpus."""
    from sbmoe.index.retriever import Retriever

    stop = threading.Event()
    outcomes: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
            for _ in range(400):  # bounded in count, and stopped by the test
                if stop.is_set():
                    break
                outcomes.append(client.post("/api/v1.0/indexes/sci/search",
                                            json={"queries": [QUERY], "k": 5}).status_code)

    clients = [threading.Thread(target=load) for _ in range(3)]
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        before = status(client)
        for thread in clients:
            thread.start()
        replace_folder(server.folders["sci"], tiny_indexes["flat30"])
        first = client.post("/admin/reload", json={"index": "sci"})
        second = client.post("/admin/reload")  # every index
        stop.set()
        for thread in clients:
            thread.join(30)
        assert first.status_code == 200, first.text
        assert first.json() == {"reloaded": {"sci": before["generation"] + 1}}
        assert second.json()["reloaded"]["sci"] == before["generation"] + 2
        after = status(client)
        assert after["count"] == 30 and after["generation"] == before["generation"] + 2
        expected = list(Retriever.from_index(tiny_indexes["flat30"]).search([QUERY], k=10)["0"])
        assert hits(client) == expected
    assert outcomes and set(outcomes) == {200}
    replace_folder(server.folders["sci"], tiny_indexes["flat50"])  # leave the module's index as it was
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        assert client.post("/admin/reload", json={"index": "sci"}).status_code == 200
        assert status(client)["count"] == 50


def test_damaged_folder_is_refused_and_the_old_index_keeps_serving(server: RunningServer,
                                                                   tiny_indexes: dict[str, Path]) -> None:
    folder = server.folders["hnsw"]
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        before, served_hits = status(client, "hnsw"), hits(client, "hnsw")
        faiss_file = folder / "index.faiss"
        intact = faiss_file.read_bytes()
        faiss_file.write_bytes(intact[: len(intact) // 3])  # truncated, as by a full disk or a killed copy
        refused = client.post("/admin/reload", json={"index": "hnsw"})
        assert refused.status_code == 409
        body = refused.json()
        assert set(body) == {"error", "request_id"} and "\n" not in refused.text
        assert "not a readable FAISS index" in body["error"] and "keeps serving" in body["error"]
        assert status(client, "hnsw")["generation"] == before["generation"]
        assert hits(client, "hnsw") == served_hits

        (folder / "meta.json").write_text("{not json", encoding="utf-8")
        faiss_file.write_bytes(intact)
        assert client.post("/admin/reload", json={"index": "hnsw"}).status_code == 409
        shutil.rmtree(folder)
        missing = client.post("/admin/reload", json={"index": "hnsw"})
        assert missing.status_code == 409 and "not found" in missing.json()["error"]
        assert hits(client, "hnsw") == served_hits

        shutil.copytree(tiny_indexes["hnsw50"], folder)  # repaired: the next reload takes it
        assert client.post("/admin/reload", json={"index": "hnsw"}).status_code == 200
        assert status(client, "hnsw")["generation"] == before["generation"] + 1
        assert hits(client, "hnsw") == served_hits
        metrics = client.get("/metrics").text
    assert 'sbmoe_index_reloads_total{index="hnsw",outcome="refused"} 3' in metrics
