"""FAISS index types: recall@100 vs exact search, queries/s, build time, bytes, and indexing peak RSS.

    python eval/bench_index.py [--n 1000000] [--chunk 100000] [--skip-scifact]

Two sets: SciFact's 5,183 MiniLM document embeddings (300 test queries), and a synthetic set of n
384-d unit vectors from a seeded Gaussian mixture (4,096 clusters: embeddings are clustered, and
isotropic noise would be an unrealistic worst case for any ANN index). The synthetic set is written to
on-disk shards first; each index type is then built from the shards and saved in a child process
(sbmoe's streamed path), whose peak RSS is read with wait4; build time includes writing the index.
Writes eval/results/bench_index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
TYPES = {  # name -> (factory, build params, search params), sized for ~1M vectors
    "flat": ("Flat", {}, {}),
    "hnsw": ("HNSW32,Flat", {"efConstruction": 80}, {"efSearch": 256}),
    "ivf": ("IVF4096,Flat", {}, {"nprobe": 32}),
    "ivfpq": ("IVF4096,PQ48x8", {}, {"nprobe": 32}),
}


def mixture_chunk(start: int, rows: int, centers: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, start])
    picks = rng.integers(0, len(centers), rows)
    vectors = centers[picks] + 0.35 * rng.standard_normal((rows, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_synthetic_shards(folder: Path, n: int, chunk: int, seed: int = 0):
    from sbmoe.atomic import atomic_file
    from sbmoe.index.shards import ShardManifest, shard_paths

    centers = np.random.default_rng(seed).standard_normal((4096, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    manifest = ShardManifest("synthetic", f"mixture-{n}-{seed}", chunk, "float32", DIM)
    (folder / "manifest.json").write_text(json.dumps(manifest.__dict__))
    for number, start in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - start)
        vectors_path, ids_path, marker_path = shard_paths(folder, number)
        with atomic_file(vectors_path, "wb") as handle:
            np.save(handle, mixture_chunk(start, rows, centers, seed))
        ids_path.write_text("".join(f"{i}\n" for i in range(start, start + rows)))
        marker_path.write_text(json.dumps({"rows": rows}))
    queries = mixture_chunk(n, 1000, centers, seed + 1)
    return manifest, (n + chunk - 1) // chunk, queries


def measure(index, queries: np.ndarray, k: int = 100) -> tuple[np.ndarray, float]:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index.search(queries[:10], k)  # warm-up
    start = time.perf_counter()
    _, rows = index.search(queries, k)
    return rows, len(queries) / (time.perf_counter() - start)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def child(args: argparse.Namespace) -> None:
    """Build one index type from the synthetic shards, search, print one JSON line."""
    from sbmoe.index.faiss_index import IndexMeta
    from sbmoe.index.shards import ShardManifest, index_from_shards

    folder = Path(args.shards)
    manifest = ShardManifest(**json.loads((folder / "manifest.json").read_text()))
    factory, build, search = TYPES[args.child]
    meta = IndexMeta("synthetic", "synthetic", "none", DIM, True, 0, factory=factory, build_params=build,
                     search_params=search)
    start = time.perf_counter()
    built = index_from_shards(folder, args.count, manifest, meta)
    built.save(folder / f"index-{args.child}")  # as `sbmoe index` does: straight to disk, no in-memory copy
    build_seconds = time.perf_counter() - start
    index_bytes = (folder / f"index-{args.child}" / "index.faiss").stat().st_size
    shutil.rmtree(folder / f"index-{args.child}")
    queries = np.load(folder / "queries.npy")
    rows, qps = measure(built.index, queries)
    np.save(folder / f"found-{args.child}.npy", rows)
    print(json.dumps({"build_seconds": build_seconds, "qps": qps, "bytes": index_bytes}))


def run_child(name: str, folder: Path, count: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--shards", str(folder),
                             "--count", str(count)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"child {name} failed with status {status}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def scifact_rows() -> list[dict]:
    from sbmoe.data import BeirDataset
    from sbmoe.index.faiss_index import new_faiss_index
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_corpus, encode_texts

    model = load_encoder(EncoderConfig(model="minilm", backend="torch"))
    dataset = BeirDataset.open("scifact")
    _, docs = encode_corpus(model, dataset, cache=CorpusEmbeddingCache(), show_progress=False)
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    queries = encode_texts(model, list(dataset.load_split("test")[0].values()))
    small = {"flat": ("Flat", {}, {}), "hnsw": ("HNSW32,Flat", {"efConstruction": 80}, {"efSearch": 128}),
             "ivf": ("IVF64,Flat", {}, {"nprobe": 8}), "ivfpq": ("IVF64,PQ48x8", {}, {"nprobe": 8})}
    results, exact = [], None
    for name, (factory, build, search) in small.items():
        index = new_faiss_index(DIM, factory, build)
        start = time.perf_counter()
        if not index.is_trained:
            index.train(docs)
        index.add(docs)
        build_seconds = time.perf_counter() - start
        for key, value in search.items():
            faiss.ParameterSpace().set_index_parameter(index, key, value)
        rows, qps = measure(index, queries)
        exact = rows if name == "flat" else exact
        results.append({"set": "scifact", "type": name, "factory": factory, "search_params": search,
                        "recall@100": recall_at(rows, exact), "qps": qps, "build_seconds": build_seconds,
                        "bytes": int(faiss.serialize_index(index).size)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results = [] if args.skip_scifact else scifact_rows()
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        folder = Path(tmp)
        _, count, queries = write_synthetic_shards(folder, args.n, args.chunk)
        np.save(folder / "queries.npy", queries)
        rows = {name: run_child(name, folder, count) for name in TYPES}
        exact = np.load(folder / "found-flat.npy")
        for name, row in rows.items():
            found = np.load(folder / f"found-{name}.npy")
            results.append({"set": f"synthetic-{args.n}", "type": name, "factory": TYPES[name][0],
                            "search_params": TYPES[name][2], "recall@100": recall_at(found, exact), **row})

    flat = {r["set"]: r for r in results if r["type"] == "flat"}
    for r in results:
        r["qps_vs_flat"] = r["qps"] / flat[r["set"]]["qps"]
        r["bytes_vs_flat"] = r["bytes"] / flat[r["set"]]["bytes"]
    header = f"{'set':<18} {'type':<6} {'recall@100':>10} {'q/s':>9} {'x flat':>7} {'build s':>8} {'MB':>8} " \
             f"{'/flat':>6} {'peak RSS MB':>11}"
    print(header)
    for r in results:
        rss = f"{r['peak_rss_mb']:11.0f}" if "peak_rss_mb" in r else f"{'-':>11}"
        print(f"{r['set']:<18} {r['type']:<6} {r['recall@100']:10.4f} {r['qps']:9.1f} {r['qps_vs_flat']:7.1f} "
              f"{r['build_seconds']:8.1f} {r['bytes'] / 2**20:8.1f} {r['bytes_vs_flat']:6.3f} {rss}")
    from sbmoe.atomic import write_json

    write_json(RESULTS / "bench_index.json", {"results": results, "queries_synthetic": 1000,
                                              "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                                         f"faiss {faiss.__version__}"})


if __name__ == "__main__":
    main()
