"""SB-MoE under the paper's recipe, at scale: tier H (the head at full scale, encoder frozen).

    python eval/sbmoe_recipe.py [--encoders minilm-l3] [--sets scifact,medquad,squad] [--seeds 0,1,2]
                                [--budget-minutes 45] [--threads 1]
    python eval/sbmoe_recipe.py --summarize      # tables, tests, plot from the cells written so far

Tier H: the encoder is frozen (the paper's encoder lr/100 taken to its limit) and the SB-MoE head is
trained on its cached pooled embeddings under the rest of the paper's recipe: AdamW (weight decay 0.01),
lr 1e-4 constant, batch 64 with in-batch negatives only (no duplicate query or document in a batch),
temperature 1 over dot products of unnormalised embeddings, E = 6, no balance loss, 30 epochs, the last
epoch kept. Training sets: SciFact (809 train queries), MedQuAD (12,853) and SQuAD v1.1 (87,599); 10% of
the training queries (at most 1,000, the same for every arm) are held out for a dev nDCG@10 curve (dev
queries against their positives and 1,000 random distractors), recorded per epoch and never used to pick
a checkpoint. Evaluation: each set's own test split (in-domain); zero-shot from the MedQuAD and SQuAD
models on SciFact, ArguAna, Cranfield, CACM, the TREC DL19 MS MARCO pool and the other new set. Every
arm is evaluated the same way: exact inner-product search (FAISS Flat) over embeddings from one encoder
pass at the encoder's own max length, the head applied to them.

Arms (3 seeds each; a head is evaluated with top-1 and with dense inference from one training run):
  paper    the paper's gate, x + normalize(sum_i w_i E_i(x)), noisy top-1 (its router gets no gradient)
  best     the best trainable gate of the earlier SciFact grid (gumbel), same recipe
  single   E = 1: the same adapter shape without routing (is a gain routing or parameters?)
  random   a uniformly random expert in training and inference (control)
  query    the best gate on the query side only: documents keep the base embeddings (an index is reused)
and one ``base`` cell per encoder (the encoder untouched, as it ships: its own normalisation, scored by the
similarity it declares: cosine for minilm-l3, which has no Normalize layer, normalises its embeddings).

Scale curve: ``--sets squad@1000,squad@4000,squad@16000`` trains on nested seeded subsets of the SQuAD
training queries (the same dev hold-out), evaluated on the SQuAD test split.

Each cell (encoder x training set x arm x seed) is written to eval/results/sbmoe_recipe/cells/ when it
finishes and skipped on the next run: the command resumes after a kill; a budget decides how many cells a
call runs. Pooled embeddings are cached under eval/cache/sbmoe_recipe/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from recipe_cells import cell_path, finish_cell, pack_cells

from sbmoe.atomic import atomic_file, write_json
from sbmoe.data import BeirDataset
from sbmoe.evaluation.metrics import per_query_table
from sbmoe.models.sbmoe_head import SBMoEHead
from sbmoe.runs import top_hits
from sbmoe.training.embedding_head import HeadTrainConfig, apply_head, parameter_shift, train_head

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = RESULTS / "sbmoe_recipe"
CACHE = HERE / "cache" / "sbmoe_recipe"
TRAIN_SETS = ["scifact", "medquad", "squad"]
ZERO_SHOT = ["scifact", "arguana", "cranfield", "cacm", "msmarco-dl19-mini"]
METRICS = ["nDCG@10", "R@100"]
BEST_GATE = "gumbel"  # the best trainable gate on paraphrase-MiniLM-L3-v2 in eval/results/sbmoe_zero_shot
ARMS: dict[str, dict] = {
    "paper": {"gate": "paper", "experts": 6, "modes": ["top1", "all"]},
    "best": {"gate": BEST_GATE, "experts": 6, "modes": ["top1", "all"]},
    "single": {"gate": "scaled", "experts": 1, "modes": ["top1"]},
    "random": {"gate": "scaled", "experts": 6, "modes": ["random"]},
    "query": {"gate": BEST_GATE, "experts": 6, "modes": ["top1", "all"], "head_side": "query"},
}
DEV_QUERIES, DEV_DISTRACTORS = 1000, 1000


def split_name(train_set: str) -> tuple[str, int | None]:
    """``squad@4000`` -> ("squad", 4000): the first 4,000 of a seeded shuffle of the training queries (nested
    subsets, the scale curve); a plain name -> all of them."""
    name, _, size = train_set.partition("@")
    return name, int(size) if size else None


def eval_sets(train_set: str) -> list[str]:
    """In-domain first, then the zero-shot sets (SciFact-trained heads and scale-curve subsets are evaluated
    in-domain only)."""
    name, size = split_name(train_set)
    if name == "scifact" or size is not None:
        return [name]
    other = "squad" if train_set == "medquad" else "medquad"
    return [train_set, *[s for s in ZERO_SHOT if s != train_set], other]


class Embeddings:
    """Pooled base-encoder embeddings of every document and query of a dataset, encoded once and cached."""

    def __init__(self, encoder: str, batch_size: int = 64, model=None, cache: bool = True) -> None:
        """``model``: a loaded (e.g. fine-tuned) model to encode with instead of ``encoder``'s base weights;
        ``cache=False`` keeps its embeddings in memory only."""
        self.encoder, self.batch_size, self.cache = encoder, batch_size, cache
        self._model = model
        self._memo: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}

    @property
    def model(self):
        if self._model is None:
            from sbmoe.models.encoder import EncoderConfig, load_encoder

            self._model = load_encoder(EncoderConfig(model=self.encoder, batch_size=self.batch_size, backend="torch"))
        return self._model

    def get(self, dataset: str, what: str) -> tuple[list[str], np.ndarray]:
        """(ids, float32 pooled embeddings) of ``what`` = corpus | queries (all splits)."""
        key = (dataset, what)
        if key in self._memo:
            return self._memo[key]
        folder = CACHE / self.encoder
        ids_path, npy_path = folder / f"{dataset}.{what}.ids.json", folder / f"{dataset}.{what}.npy"
        if self.cache and ids_path.exists() and npy_path.exists():
            ids, vectors = json.loads(ids_path.read_text(encoding="utf-8")), np.load(npy_path)
        else:
            from sbmoe.models.encoding import encode_texts
            from sbmoe.models.pipeline import pooling_prefix

            data = BeirDataset.open(dataset)
            if what == "corpus":
                texts = {doc.doc_id: doc.as_text() for doc in data.iter_corpus()}
            else:
                from sbmoe.data import read_queries

                texts = read_queries(data.queries_path)
            ids = list(texts)
            started = time.perf_counter()
            vectors = encode_texts(pooling_prefix(self.model), [texts[i] for i in ids], self.batch_size,
                                   show_progress=sys.stderr.isatty())
            print(f"encoded {dataset} {what}: {len(ids)} texts in {(time.perf_counter() - started) / 60:.1f} min",
                  flush=True)
            if self.cache:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_file(npy_path, "wb") as handle:
                    np.save(handle, vectors)
                write_json(ids_path, ids)
        self._memo[key] = (ids, vectors)
        return ids, vectors

    def rows(self, dataset: str, what: str, wanted: list[str]) -> torch.Tensor:
        ids, vectors = self.get(dataset, what)
        index = {i: n for n, i in enumerate(ids)}
        return torch.from_numpy(np.ascontiguousarray(vectors[[index[i] for i in wanted]]))


def search(queries: torch.Tensor, docs: torch.Tensor, qids: list[str], doc_ids: list[str], k: int,
           drop_self_hits: bool) -> dict[str, dict[str, float]]:
    """Exact inner-product top-k (FAISS Flat), a query's own id removed where the dataset asks for it."""
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs.numpy(), dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k + 1)
    return {qid: top_hits(((doc_ids[r], float(score)) for score, r in zip(score_row, doc_row, strict=True) if r >= 0),
                          qid, k, drop_self_hits)
            for qid, score_row, doc_row in zip(qids, scores, rows, strict=True)}


def evaluate(embeddings: Embeddings, datasets: list[str], encode_q, encode_d) -> dict:
    """{dataset: {metric: mean, "per_query": {qid: nDCG@10}}} with queries/documents mapped by the
    given functions (pooled embeddings -> final embeddings)."""
    out = {}
    for name in datasets:
        data = BeirDataset.open(name)
        queries, qrels = data.load_split("test")
        qids = sorted(q for q in queries if q in qrels)
        doc_ids, doc_vectors = embeddings.get(name, "corpus")
        with torch.no_grad():
            docs = encode_d(torch.from_numpy(np.asarray(doc_vectors)))
            q = encode_q(embeddings.rows(name, "queries", qids))
        run = search(q, docs, qids, doc_ids, 100, data.drop_self_hits)
        table = per_query_table(qrels, run, METRICS)
        out[name] = {m: statistics.mean(table[m].values()) for m in METRICS}
        out[name]["per_query"] = {qid: round(v, 5) for qid, v in table["nDCG@10"].items()}
    return out


def split_queries(train_set: str) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """(training query ids, dev query ids, the split's qrels) of one training set: a seeded dev hold-out of
    10% of the training queries (at most 1,000) and, for ``squad@N``, the first N of a seeded shuffle of the
    rest. The one split of both tiers (eval/sbmoe_recipe_encoder.py trains the encoder on it)."""
    name, size = split_name(train_set)
    queries, qrels = BeirDataset.open(name).load_split("train")
    qids = sorted(q for q in queries if any(r > 0 for r in qrels.get(q, {}).values()))
    dev = set(random.Random(0).sample(qids, min(DEV_QUERIES, max(1, round(0.1 * len(qids))))))
    if size is not None:  # the dev hold-out is the full set's, so every subset is scored on the same dev queries
        kept = [q for q in qids if q not in dev]
        random.Random(1).shuffle(kept)
        qids = sorted(set(kept[:size]) | dev)
    return [q for q in qids if q not in dev], sorted(dev), qrels


def training_pairs(embeddings: Embeddings, train_set: str) -> dict:
    """Train pairs (query row, document row), the dev hold-out and its distractors, for one training set."""
    name = split_name(train_set)[0]
    train_qids, dev_qids, qrels = split_queries(train_set)
    dev = set(dev_qids)
    q_ids, _ = embeddings.get(name, "queries")
    d_ids, _ = embeddings.get(name, "corpus")
    q_row = {q: n for n, q in enumerate(q_ids)}
    d_row = {d: n for n, d in enumerate(d_ids)}
    pairs = [(q_row[q], d_row[d]) for q in train_qids for d, r in sorted(qrels[q].items()) if r > 0 and d in d_row]
    dev_docs = {d for q in dev for d, r in qrels[q].items() if r > 0 and d in d_row}
    others = sorted(set(d_row) - dev_docs)
    dev_docs |= set(random.Random(0).sample(others, min(DEV_DISTRACTORS, len(others))))
    return {"pairs": np.asarray(pairs, dtype=np.int64), "dev": sorted(dev), "dev_docs": sorted(dev_docs),
            "qrels": {q: {d: r for d, r in qrels[q].items() if r > 0} for q in dev},
            "train_queries": len(train_qids)}


def routing_stats(head: SBMoEHead, embeddings: Embeddings, name: str) -> dict:
    """Top-1 expert usage entropy over the test documents (in units of ln E) and the share of (query,
    relevant document) pairs whose query and document go to the same expert."""
    from sbmoe.evaluation.routing import entropy, route, shares

    data = BeirDataset.open(name)
    queries, qrels = data.load_split("test")
    doc_ids, doc_vectors = embeddings.get(name, "corpus")
    qids = sorted(q for q in queries if q in qrels)
    doc_expert = route(head, doc_vectors)
    q_expert = route(head, embeddings.rows(name, "queries", qids).numpy())
    p = shares(doc_expert, head.num_experts)
    row = {d: n for n, d in enumerate(doc_ids)}
    same = [int(q_expert[i] == doc_expert[row[d]]) for i, q in enumerate(qids) for d, r in qrels[q].items()
            if r > 0 and d in row]
    return {"doc_usage": [round(float(x), 4) for x in p],
            "usage_entropy_ln_e": round(entropy(p) / math.log(head.num_experts), 4),
            "same_expert_share": round(sum(same) / max(len(same), 1), 4),
            "chance_share": round(float((p ** 2).sum()), 4)}


def final_embeddings(model):
    """Pooled embeddings -> ``model``'s final embeddings: its modules after Pooling (e.g. Normalize)."""
    from sbmoe.models.pipeline import apply_after_pooling

    return lambda pooled: torch.from_numpy(apply_after_pooling(model, pooled.numpy()))


def declared_embeddings(model):
    """``final_embeddings`` scored as ``model`` declares (``similarity_fn_name``): L2-normalised for cosine, so
    that the inner-product search ranks by cosine; raw for dot."""
    from sbmoe.index.similarity import prepare_vectors
    from sbmoe.models.declared import declared_similarity

    similarity, final = declared_similarity(model), final_embeddings(model)
    if similarity not in ("cosine", "dot"):
        raise SystemExit(f"{similarity} similarity: this inner-product search serves cosine and dot only")
    return lambda pooled: torch.from_numpy(prepare_vectors(final(pooled).numpy(), similarity))


def run_base(encoder: str, embeddings: Embeddings) -> dict:
    """The untouched encoder: its own post-pooling modules (e.g. Normalize) on the pooled embeddings, scored by
    the similarity it declares."""
    from sbmoe.models.declared import declared_similarity

    datasets = list(dict.fromkeys(["scifact", "medquad", "squad", *ZERO_SHOT]))
    encode = declared_embeddings(embeddings.model)
    return {"similarity": declared_similarity(embeddings.model),
            "modes": {"-": evaluate(embeddings, datasets, encode, encode)}}


def run_arm(encoder: str, train_set: str, arm: str, seed: int, embeddings: Embeddings, epochs: int) -> dict:
    settings = ARMS[arm]
    data = training_pairs(embeddings, train_set)
    name = split_name(train_set)[0]
    _, q_vectors = embeddings.get(name, "queries")
    _, d_vectors = embeddings.get(name, "corpus")
    queries, docs = torch.from_numpy(np.asarray(q_vectors)), torch.from_numpy(np.asarray(d_vectors))
    torch.manual_seed(seed)
    head = SBMoEHead(queries.shape[1], settings["experts"], gate=settings["gate"], aux_loss_weight=0.0,
                     mode="random" if arm == "random" else "top1")
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    config = HeadTrainConfig(epochs=epochs, seed=seed, head_side=settings.get("head_side", "both"))
    dev_q = embeddings.rows(name, "queries", data["dev"])
    dev_d = embeddings.rows(name, "corpus", data["dev_docs"])
    curve = []

    def on_epoch(epoch: int, loss: float) -> None:
        mode = settings["modes"][0]
        q = apply_head(head, dev_q, mode)
        d = apply_head(head, dev_d, mode) if config.head_side == "both" else dev_d
        run = search(q, d, data["dev"], data["dev_docs"], 10, False)
        ndcg = statistics.mean(per_query_table(data["qrels"], run, ["nDCG@10"])["nDCG@10"].values())
        curve.append({"epoch": epoch, "loss": round(loss, 5), "dev_ndcg10": round(ndcg, 5)})

    started = time.perf_counter()
    train_head(head, queries, docs, data["pairs"], config, on_epoch)
    record = {"train_minutes": round((time.perf_counter() - started) / 60, 2), "train_pairs": len(data["pairs"]),
              "train_queries": data["train_queries"], "dev_queries": len(data["dev"]), "dev_curve": curve,
              "parameter_shift": parameter_shift(before, head), "modes": {}, "routing": {}}
    record.update(evaluate_head(head, embeddings, train_set, settings["modes"], config.head_side))
    return record


def evaluate_head(head: SBMoEHead, embeddings: Embeddings, train_set: str, modes: list[str],
                  head_side: str = "both") -> dict:
    """{"modes": {mode: evaluate(...)}, "routing": {dataset: routing_stats}} of a trained head on the pooled
    embeddings (routing for heads of several experts with a learnt or fixed gate, not the random control)."""
    out: dict = {"modes": {}, "routing": {}}
    for mode in modes:
        def encode_q(x: torch.Tensor, mode: str = mode) -> torch.Tensor:
            return apply_head(head, x, mode)

        def encode_d(x: torch.Tensor, mode: str = mode) -> torch.Tensor:
            return apply_head(head, x, mode) if head_side == "both" else x

        out["modes"][mode] = evaluate(embeddings, eval_sets(train_set), encode_q, encode_d)
    if head.num_experts > 1 and "random" not in modes:
        out["routing"] = {s: routing_stats(head, embeddings, s) for s in eval_sets(train_set)}
    return out


def plan(args: argparse.Namespace) -> list[tuple[str, str | None, str, int | None]]:
    """Seed-major within each (encoder, set): a cut-short grid is a set of complete comparisons; the sets in
    the order given (cheapest first by default)."""
    cells: list[tuple[str, str | None, str, int | None]] = []
    for encoder in args.encoders:
        if "base" in args.arms:
            cells.append((encoder, None, "base", None))
        for train_set in args.sets:
            for seed in args.seeds:
                cells += [(encoder, train_set, arm, seed) for arm in args.arms if arm != "base"]
    return cells


def versions() -> dict:
    import faiss
    import sentence_transformers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "sentence-transformers": sentence_transformers.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__}


def run_grid(args: argparse.Namespace) -> None:
    started, last = time.perf_counter(), 0.0
    for encoder in args.encoders:
        embeddings = Embeddings(encoder)
        for enc, train_set, arm, seed in plan(args):
            if enc != encoder:
                continue
            path = cell_path(args.out, encoder, train_set, arm, seed)
            if path.exists():
                continue
            elapsed = (time.perf_counter() - started) / 60
            if args.budget_minutes and elapsed + last > args.budget_minutes:
                print(f"budget reached after {elapsed:.1f} min; next cell {path.stem}", flush=True)
                return
            cell_start = time.perf_counter()
            record = {"tier": "H", "encoder": encoder, "train_set": train_set, "arm": arm, "seed": seed,
                      "epochs": args.epochs, "threads": torch.get_num_threads(), "versions": versions(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}
            record.update(run_base(encoder, embeddings) if arm == "base"
                          else run_arm(encoder, train_set, arm, seed, embeddings, args.epochs))
            last = (time.perf_counter() - cell_start) / 60
            finish_cell(path, record, args.out, last, "Recipe cell" if args.commit else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="minilm-l3", type=lambda s: s.split(","))
    parser.add_argument("--sets", default=",".join(TRAIN_SETS), type=lambda s: s.split(","))
    parser.add_argument("--arms", default=",".join(["base", *ARMS]), type=lambda s: s.split(","))
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (cells/ inside)")
    parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commit", action="store_true", help="git-commit each cell as soon as it is written")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--pack", action="store_true", help="rewrite cells with dict per-query tables packed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pack:
        print(f"packed {pack_cells(args.out)} cells", flush=True)
        return
    if args.summarize:
        from sbmoe_recipe_summary import summarize

        summarize()
        return
    run_grid(args)


if __name__ == "__main__":
    main()
