"""Streamed indexing: SIGKILL mid-run then resume equals a clean run; damaged shards refused; index types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from sbmoe.data import BeirDataset
from sbmoe.index.builder import IndexConfig, build_index
from sbmoe.index.faiss_index import DenseIndex, IndexMeta, factory_string, new_faiss_index
from sbmoe.index.shards import ShardError, ShardManifest, encode_to_shards, read_shard
from sbmoe.models.encoder import EncoderConfig


def index_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    index = DenseIndex.load(path)
    return index.doc_ids, index.index.reconstruct_n(0, index.index.ntotal)


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "sbmoe.cli", *map(str, args)]


def test_killed_indexing_resumes_to_the_same_index(tiny_bert_dir: Path, scifact_dir: Path, tmp_path: Path) -> None:
    """SciFact's first 1,300 documents in 13 shards of 100; the run is SIGKILLed once three shards are complete."""
    from beir_slices import write_slice

    scifact_dir = write_slice(scifact_dir, tmp_path / "scifact1300", 1300)
    common = ("-m", tiny_bert_dir, "--chunk-size", "100", "-b", "50", "--no-cache", "--threads", "1")
    clean = tmp_path / "clean"
    subprocess.run(cli("index", scifact_dir, "-o", clean, *common), check=True, capture_output=True)

    killed = tmp_path / "killed"
    shards = Path(f"{killed}.shards")
    proc = subprocess.Popen(cli("index", scifact_dir, "-o", killed, *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (shards / "shard-00002.json").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shards.glob("shard-*.json"))
    assert 3 <= len(done) < 13, done  # killed midway
    assert not killed.exists()  # no half-written index

    result = subprocess.run(cli("index", scifact_dir, "-o", killed, *common), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    clean_ids, clean_vectors = index_vectors(clean)
    resumed_ids, resumed_vectors = index_vectors(killed)
    assert resumed_ids == clean_ids and len(clean_ids) == 1300
    assert np.array_equal(resumed_vectors, clean_vectors)
    assert not shards.exists()  # removed once the index is in place


def test_shards_of_another_run_or_damaged_are_refused(scifact_slice: Path, tmp_path: Path) -> None:
    dataset = BeirDataset.open(scifact_slice)
    manifest = ShardManifest("model-a", dataset.corpus_fingerprint(), 20, "float32", 4)
    encode = lambda texts: np.ones((len(texts), 4), dtype=np.float32)  # noqa: E731
    assert encode_to_shards(dataset, tmp_path, manifest, encode, show_progress=False) == 3
    other = ShardManifest("model-b", dataset.corpus_fingerprint(), 20, "float32", 4)
    with pytest.raises(ShardError, match="holds shards of another run"):
        encode_to_shards(dataset, tmp_path, other, encode, show_progress=False)
    np.save(tmp_path / "shard-00001.npy", np.ones((7, 4), dtype=np.float32))  # wrong row count
    with pytest.raises(ShardError, match="do not match its marker"):
        read_shard(tmp_path, 1, manifest)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="malformed shard manifest"):
        encode_to_shards(dataset, tmp_path, manifest, encode, show_progress=False)


def test_float16_shards_and_ivf_from_shards(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    config = IndexConfig(dataset=str(scifact_slice), output=tmp_path / "ivf", factory=factory_string("ivf", nlist=4),
                         search_params={"nprobe": 4}, chunk_size=16, shard_dtype="float16", use_cache=False,
                         keep_shards=True, show_progress=False, encoder=EncoderConfig(model=str(tiny_bert_dir)))
    built = build_index(config)
    assert built.meta.count == 50 and json.loads((tmp_path / "ivf" / "meta.json").read_text())["search_params"] == {
        "nprobe": 4}
    assert np.load(tmp_path / "ivf.shards" / "shard-00000.npy").dtype == np.float16
    # nprobe = nlist searches every list: results equal exact search over the same (fp16-rounded) vectors
    vectors = np.concatenate([np.load(p).astype(np.float32) for p in sorted((tmp_path / "ivf.shards").glob("*.npy"))])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # the tiny BERT is a cosine model: stored normalised
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    reloaded = DenseIndex.load(tmp_path / "ivf")
    _, rows = exact.search(vectors[:5], 10)
    assert reloaded.search(vectors[:5], 10)[1] == [[built.doc_ids[r] for r in row] for row in rows]


@pytest.mark.parametrize(("kind", "build", "search"), [
    ("hnsw", {"efConstruction": 64}, {"efSearch": 64}),
    ("ivfpq", {}, {"nprobe": 8}),
])
def test_approximate_index_types_recall(kind: str, build: dict, search: dict) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    meta = IndexMeta("toy", "f", "mean", 32, False, 0, factory=factory_string(kind, hnsw_m=16, nlist=16, pq_m=8),
                     build_params=build, search_params=search)
    index = DenseIndex.from_embeddings(vectors, [str(i) for i in range(4000)], meta)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = index.search(queries, 10)[1]
    recall = np.mean([len({str(i) for i in e} & set(f)) / 10 for e, f in zip(exact, found, strict=True)])
    assert recall >= (0.9 if kind == "hnsw" else 0.3), recall
    with pytest.raises(ValueError, match="efConstruction applies to HNSW"):
        new_faiss_index(8, "Flat", {"efConstruction": 10})


def test_two_process_encoding_gives_the_same_index(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    def build(name: str, devices: tuple[str, ...]) -> DenseIndex:
        return build_index(IndexConfig(dataset=str(scifact_slice), output=tmp_path / name, devices=devices,
                                       chunk_size=20, use_cache=False, show_progress=False,
                                       encoder=EncoderConfig(model=str(tiny_bert_dir))))

    single, pooled = build("one", ()), build("two", ("cpu", "cpu"))
    assert pooled.doc_ids == single.doc_ids
    np.testing.assert_allclose(pooled.index.reconstruct_n(0, 50), single.index.reconstruct_n(0, 50), atol=1e-5)
