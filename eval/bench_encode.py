"""Corpus encoding speed: sbmoe's encoder vs SentenceTransformer.encode, same model/corpus/threads/batch.

    python eval/bench_encode.py [--model minilm] [--dataset scifact] [--batch-size 64] [--threads N]

Runs A B B A (sbmoe, sentence-transformers, then reversed) after a warm-up and keeps each side's best
time, so drift on a shared machine hits both. Also reports the max cosine difference between the two
embedding matrices, achieved GFLOP/s, and the peak RSS of a real ``sbmoe index`` run (a subprocess).
Writes eval/results/bench_encode.json (keys ratio, max_cos_diff, peak_rss_mb, ...).
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sbmoe.atomic import write_json
from sbmoe.data import BeirDataset
from sbmoe.models.encoder import EncoderConfig, load_encoder, set_threads
from sbmoe.models.encoding import encode_texts

RESULTS = Path(__file__).resolve().parent / "results"


def encoder_flops(model, token_counts: np.ndarray) -> float:
    """Forward FLOPs: 2 per weight per token in the layers, plus attention's QK^T and AV (4 * T^2 * d)."""
    config = model[0].auto_model.config
    d, layers = config.hidden_size, config.num_hidden_layers
    per_layer_weights = 4 * d * d + 2 * d * config.intermediate_size
    return float(sum(2 * layers * per_layer_weights * t + 4 * layers * t * t * d for t in token_counts))


def peak_rss_of_index(model: str, dataset: str, batch_size: int, threads: int) -> float:
    """Peak resident memory (MB) of ``sbmoe index`` as a child process, encoding without the cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sbmoe.cli", "index", dataset, "-o", f"{tmp}/idx", "-m", model,
               "-b", str(batch_size), "--threads", str(threads), "--no-cache"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--limit", type=int, default=None, help="Only the first N documents (quick runs).")
    args = parser.parse_args()
    set_threads(args.threads)

    dataset = BeirDataset.open(args.dataset)
    texts = [doc.as_text() for doc in dataset.iter_corpus()][: args.limit]
    model = load_encoder(EncoderConfig(model=args.model))
    warm = texts[:args.batch_size]
    encode_texts(model, warm, args.batch_size)
    model.encode(warm, batch_size=args.batch_size)

    timings: dict[str, list[float]] = {"sbmoe": [], "sentence-transformers": []}
    outputs: dict[str, np.ndarray] = {}
    runners = {
        "sbmoe": lambda: encode_texts(model, texts, args.batch_size),
        "sentence-transformers": lambda: model.encode(texts, batch_size=args.batch_size),
    }
    for name in ["sbmoe", "sentence-transformers", "sentence-transformers", "sbmoe"]:
        start = time.perf_counter()
        outputs[name] = runners[name]()
        timings[name].append(time.perf_counter() - start)
        print(f"  {name:<22} {timings[name][-1]:7.1f} s", flush=True)

    ours, theirs = outputs["sbmoe"], outputs["sentence-transformers"]
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    max_cos_diff = float(np.max(1.0 - cos))
    best = {name: min(times) for name, times in timings.items()}
    docs_per_s = {name: len(texts) / seconds for name, seconds in best.items()}
    ratio = docs_per_s["sbmoe"] / docs_per_s["sentence-transformers"]
    tokens = np.array([len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                          max_length=model.max_seq_length)["input_ids"]])
    gflops = encoder_flops(model, tokens) / best["sbmoe"] / 1e9
    rss = peak_rss_of_index(args.model, args.dataset, args.batch_size, args.threads) if args.limit is None else None

    print(f"\n{'encoder':<22} {'docs/s':>8} {'best s':>8}")
    for name in timings:
        print(f"{name:<22} {docs_per_s[name]:8.1f} {best[name]:8.1f}")
    print(f"ratio (sbmoe / sentence-transformers): {ratio:.3f}")
    print(f"max cosine difference: {max_cos_diff:.2e}   achieved: {gflops:.1f} GFLOP/s   "
          f"tokens: {int(tokens.sum())}")
    if rss is not None:
        print(f"peak RSS of `sbmoe index {args.dataset}`: {rss:.0f} MB")
    write_json(RESULTS / "bench_encode.json", {
        "model": args.model, "dataset": dataset.name, "documents": len(texts), "batch_size": args.batch_size,
        "threads": args.threads, "seconds": {k: [round(t, 2) for t in v] for k, v in timings.items()},
        "docs_per_s": {k: round(v, 2) for k, v in docs_per_s.items()}, "ratio": round(ratio, 4),
        "max_cos_diff": max_cos_diff, "gflops_per_s": round(gflops, 2), "tokens": int(tokens.sum()),
        "peak_rss_mb": None if rss is None else round(rss, 1),
        "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
    })


if __name__ == "__main__":
    main()
