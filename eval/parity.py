"""Cross-check: sbmoe's nDCG@10 against BEIR's own pipeline, same checkpoint, same files.

BEIR side: GenericDataLoader -> DenseRetrievalExactSearch(SentenceBERT) -> EvaluateRetrieval (pytrec_eval).
sbmoe side: the same Python API that ``sbmoe eval`` calls (exact FAISS search, ir-measures), no cache.

    python eval/parity.py [--model minilm] [--dataset scifact]

Writes eval/results/parity_<dataset>.json with keys sbmoe_ndcg10 and beir_ndcg10.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from sbmoe.atomic import write_json
from sbmoe.data import BeirDataset
from sbmoe.evaluation.benchmark import evaluate_systems
from sbmoe.evaluation.systems import dense_system
from sbmoe.models.aliases import resolve_model_name
from sbmoe.models.encoder import EncoderConfig

RESULTS = Path(__file__).resolve().parent / "results"


def beir_ndcg10(model_path: str, data_folder: Path, split: str, batch_size: int) -> tuple[float, float]:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(data_folder=str(data_folder)).load(split=split)
    searcher = DenseRetrievalExactSearch(SentenceBERT(model_path), batch_size=batch_size)
    evaluator = EvaluateRetrieval(searcher, score_function="cos_sim")
    start = time.perf_counter()
    results = evaluator.retrieve(corpus, queries)
    seconds = time.perf_counter() - start
    ndcg, _map, _recall, _precision = evaluator.evaluate(qrels, results, evaluator.k_values)
    return ndcg["NDCG@10"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    dataset = BeirDataset.open(args.dataset)
    config = EncoderConfig(model=args.model, batch_size=args.batch_size)
    start = time.perf_counter()
    report = evaluate_systems({args.model: dense_system(config, use_cache=False, show_progress=False)},
                              [str(dataset.root)], ["nDCG@10"], args.split)
    sbmoe_seconds = time.perf_counter() - start
    sbmoe_value = report.records[0].metrics["nDCG@10"]
    beir_value, beir_seconds = beir_ndcg10(resolve_model_name(args.model), dataset.root, args.split,
                                           args.batch_size)

    result = {
        "model": args.model,
        "dataset": dataset.name,
        "split": args.split,
        "sbmoe_ndcg10": round(sbmoe_value, 6),
        "beir_ndcg10": round(beir_value, 6),
        "abs_diff": round(abs(sbmoe_value - beir_value), 6),
        "within_0.002": abs(sbmoe_value - beir_value) <= 0.002,
        "sbmoe_seconds": round(sbmoe_seconds, 1),
        "beir_seconds": round(beir_seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    print(f"{'pipeline':<8}  nDCG@10   seconds\n{'sbmoe':<8}  {sbmoe_value:.4f}  {sbmoe_seconds:8.1f}\n"
          f"{'beir':<8}  {beir_value:.4f}  {beir_seconds:8.1f}\nabs diff {result['abs_diff']:.4f}")
    out = RESULTS / f"parity_{dataset.name}.json"
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
