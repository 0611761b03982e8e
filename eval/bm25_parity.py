"""BM25 parity: Lucene BM25 (pyserini, k1 0.9, b 0.4, flat title+text) on SciFact vs the published figure.

    python eval/bm25_parity.py [--dataset scifact] [--engine auto|pyserini|bm25s]

pyserini's BEIR regression (flat index) publishes nDCG@10 0.6789 and R@100 0.9253 for SciFact.
Writes eval/results/bm25_<dataset>.json (keys ndcg10, r100, engine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sbmoe.atomic import write_json
from sbmoe.bm25.engines import BM25Config, Bm25sIndex, LuceneBM25, engine_for
from sbmoe.data import BeirDataset
from sbmoe.evaluation.metrics import evaluate_run

RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = {"scifact": {"ndcg10": 0.6789, "r100": 0.9253}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    config = BM25Config(engine=args.engine)
    engine = engine_for(config)
    dataset = BeirDataset.open(args.dataset)
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
    published = PUBLISHED.get(dataset.name, {})
    result = {"dataset": dataset.name, "engine": engine, "ndcg10": round(scores["nDCG@10"], 4),
              "r100": round(scores["R@100"], 4), "published": published,
              "index_seconds": round(index_seconds, 1), "search_seconds": round(search_seconds, 1),
              "queries": len(queries)}
    print(f"{'':<10} {'nDCG@10':>8} {'R@100':>8}\n{engine:<10} {result['ndcg10']:8.4f} {result['r100']:8.4f}")
    if published:
        print(f"{'published':<10} {published['ndcg10']:8.4f} {published['r100']:8.4f}")
    write_json(RESULTS / f"bm25_{dataset.name}.json", result)


if __name__ == "__main__":
    main()
