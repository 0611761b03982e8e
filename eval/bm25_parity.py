"""BM25 parity: Lucene BM25 (pyserini, k1 0.9, b 0.4, title + text as one field) with sbmoe's defaults on
SciFact, Cranfield, CACM and ArguAna vs the reference figures; no flags, each dataset's own self-hit rule.

    python eval/bm25_parity.py [--datasets scifact,cranfield,cacm,arguana] [--engine auto|pyserini|bm25s]
                               [--output eval/results/bm25_parity.json]

References (nDCG@10 / R@100): SciFact and ArguAna, pyserini's BEIR regressions (flat index): 0.6789 / 0.9253
and 0.3970 / 0.9324 (BEIR's paper rounds ArguAna to 0.397); Cranfield and CACM, the figures in the shared
data README (measured there with pyserini 1.6.0): 0.3510 / 0.7224 and 0.4715 / 0.6405. A figure matches
when it is within 0.001 of the reference. Each dataset is a cell of the JSON file, written as soon as it
is done, so a rerun skips finished datasets (``--redo`` recomputes them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sbmoe.atomic import write_json
from sbmoe.bm25.engines import BM25Config, Bm25sIndex, LuceneBM25, engine_for
from sbmoe.data import BeirDataset
from sbmoe.evaluation.metrics import evaluate_run

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCES = {
    "scifact": {"ndcg10": 0.6789, "r100": 0.9253, "source": "pyserini BEIR regression (flat)"},
    "cranfield": {"ndcg10": 0.3510, "r100": 0.7224, "source": "shared data README (pyserini 1.6.0)"},
    "cacm": {"ndcg10": 0.4715, "r100": 0.6405, "source": "shared data README (pyserini 1.6.0)"},
    "arguana": {"ndcg10": 0.3970, "r100": 0.9324, "source": "pyserini BEIR regression (flat); BEIR paper 0.397"},
}
TOLERANCE = 0.001


def bm25_figures(name: str, config: BM25Config, engine: str) -> dict:
    """Index, search and score one dataset exactly as `sbmoe eval --bm25` does (no overrides)."""
    dataset = BeirDataset.open(name)
    queries, qrels = dataset.load_split()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if engine == "pyserini":
            searcher = LuceneBM25(LuceneBM25.build(dataset, Path(tmp) / "lucene", config.threads), config)
        else:
            searcher = Bm25sIndex(dataset, config)
        index_seconds = time.perf_counter() - start
        start = time.perf_counter()
        run = searcher.search(queries, 100, drop_self_hits=dataset.drop_self_hits)
        search_seconds = time.perf_counter() - start
    scores = evaluate_run(qrels, run, ["nDCG@10", "R@100"])
    reference = REFERENCES.get(name, {})
    result = {"dataset": dataset.name, "engine": engine, "ndcg10": round(scores["nDCG@10"], 4),
              "r100": round(scores["R@100"], 4), "reference": reference, "queries": len(queries),
              "drop_self_hits": bool(dataset.drop_self_hits), "index_seconds": round(index_seconds, 1),
              "search_seconds": round(search_seconds, 1)}
    if reference:
        result["matches"] = abs(scores["nDCG@10"] - reference["ndcg10"]) <= TOLERANCE
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(REFERENCES))
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--threads", type=int, default=BM25Config.threads)
    parser.add_argument("--output", type=Path, default=RESULTS / "bm25_parity.json")
    parser.add_argument("--redo", action="store_true", help="Recompute datasets already in the output file.")
    args = parser.parse_args()
    config = BM25Config(engine=args.engine, threads=args.threads)
    engine = engine_for(config)
    done = json.loads(args.output.read_text()) if args.output.is_file() and not args.redo else {}
    cells = {k: v for k, v in done.get("datasets", {}).items() if v.get("engine") == engine}
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        if name not in cells:
            cells[name] = bm25_figures(name, config, engine)
            write_json(args.output, {"engine": engine, "k1": config.k1, "b": config.b, "tolerance": TOLERANCE,
                                     "datasets": cells})
    print(f"{'dataset':<10} {'nDCG@10':>8} {'ref':>8} {'R@100':>8} {'ref':>8}  match")
    for name, cell in cells.items():
        ref = cell["reference"]
        print(f"{name:<10} {cell['ndcg10']:8.4f} {ref.get('ndcg10', float('nan')):8.4f} {cell['r100']:8.4f} "
              f"{ref.get('r100', float('nan')):8.4f}  {cell.get('matches', '-')}")


if __name__ == "__main__":
    main()
