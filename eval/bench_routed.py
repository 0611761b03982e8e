"""Query latency of a routed retriever against its base model on the same index, one query at a time on the CPU.

The target (issue: domain experts): with ``pilot`` routing, p50 per query <= 2.2x the base model's (one base pass
to route, one expert pass); ``average`` is reported at its own cost (a pass per expert). Each query is encoded and
searched (exact index of the base's corpus embeddings, top 10) by every system in turn, interleaved so that any
drift of the machine falls on all of them alike; the first ``--warmup`` queries are not counted. Run it alone.

    python eval/bench_routed.py --routed eval/runs/domain_experts/minilm-l3/s0/routed --dataset scifact
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "domain_experts"
os.environ.setdefault("SBMOE_CACHE", str(HERE / "cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGET = 2.2  # pilot p50 / base p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routed", type=Path, required=True, help="A routed model folder.")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--queries", type=int, default=300, help="Measured queries per system.")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--modes", default="pilot,gate,average")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=OUT)
    parser.add_argument("--name", default="latency", help="Output file stem (one per base model).")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from domain_experts import machine
    from report import percentile

    from sbmoe.atomic import atomic_file, write_json
    from sbmoe.data import BeirDataset
    from sbmoe.experts.routed import routed_module
    from sbmoe.index.faiss_index import DenseIndex, index_meta_for
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_corpus, encode_texts

    info = json.loads((args.routed / "0_RoutedTransformer" / "routing.json").read_text())
    base = load_encoder(EncoderConfig(model=info["base_model"], backend="torch"))
    routed = load_encoder(EncoderConfig(model=str(args.routed), backend="torch"))
    module = routed_module(routed)
    dataset = BeirDataset.open(args.dataset)
    doc_ids, vectors = encode_corpus(base, dataset, 64, cache=CorpusEmbeddingCache(), show_progress=False)
    index = DenseIndex.from_embeddings(vectors, doc_ids, index_meta_for(base, info["base_model"]))
    texts = list(dataset.load_split("test")[0].values())[:args.warmup + args.queries]
    modes = [m for m in args.modes.split(",") if m]
    systems = ["base", *modes]
    milliseconds: dict[str, list[float]] = {s: [] for s in systems}
    with torch.inference_mode():
        for number, text in enumerate(texts):
            for system in systems:
                model = base if system == "base" else routed
                if system != "base":
                    module.mode = system
                started = time.perf_counter()
                query = encode_texts(model, [text], 1, task="query")
                index.run(["q"], query, 10)
                if number >= args.warmup:
                    milliseconds[system].append((time.perf_counter() - started) * 1000)
    stats = {s: {"p50_ms": round(percentile(v, 50), 3), "p95_ms": round(percentile(v, 95), 3),
                 "mean_ms": round(statistics.mean(v), 3)} for s, v in milliseconds.items()}
    for system in modes:
        stats[system]["p50_over_base"] = round(stats[system]["p50_ms"] / stats["base"]["p50_ms"], 3)
    record = {"command": " ".join(["python", "eval/bench_routed.py", *sys.argv[1:]]), "routed": str(args.routed),
              "base_model": info["base_model"], "experts": info["experts"], "dataset": args.dataset,
              "queries": args.queries, "warmup": args.warmup, "threads": args.threads, "backend": "torch",
              "machine": machine(), "stats": stats,
              "target": {"pilot_p50_over_base": TARGET,
                         "met": stats.get("pilot", {}).get("p50_over_base", float("inf")) <= TARGET}}
    write_json(args.output_dir / f"{args.name}.json", record)
    lines = ["# Routed query latency", "", f"Command: `{record['command']}`", "",
             f"{info['base_model']} with experts {', '.join(info['experts'])}; {args.queries} {args.dataset} test "
             f"queries, one at a time (encode + exact top-10 search over {len(doc_ids)} documents), torch backend, "
             f"{args.threads} threads; CPU flags {', '.join(record['machine']['flags'])}.", "",
             "| system | p50 ms | p95 ms | mean ms | p50 / base |", "|---|---|---|---|---|"]
    for system in systems:
        s = stats[system]
        lines.append(f"| {'base' if system == 'base' else 'routed: ' + system} | {s['p50_ms']:.2f} | "
                     f"{s['p95_ms']:.2f} | {s['mean_ms']:.2f} | {s.get('p50_over_base', 1.0):.2f} |")
    lines += ["", f"Target: pilot p50 <= {TARGET}x the base's: {'met' if record['target']['met'] else 'missed'}."]
    with atomic_file(args.output_dir / f"{args.name}.md") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
