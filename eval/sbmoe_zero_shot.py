"""SB-MoE with trainable gates vs fine-tuning, on light and strong encoders, in-domain and zero-shot.

    python eval/sbmoe_zero_shot.py [--encoders minilm-l3,minilm-l2,minilm] [--seeds 0,1,2] [--budget-minutes 45]
    python eval/sbmoe_zero_shot.py --summarize     # tables, tests and plot from the cells written so far

Every arm is trained on the SciFact train split (all 809 queries, one hard negative per pair mined with
the base encoder, 1 epoch, batch 32, lr 1e-4; no dev hold-out: one epoch leaves nothing to select) and
evaluated on SciFact test (in-domain) and zero-shot on ArguAna, Cranfield, CACM and the TREC DL19 MS MARCO
pool. The grid is cells (encoder x arm x seed); each finished cell is written to
eval/results/sbmoe_zero_shot/cells/ at once and skipped on the next run, so the command resumes after a kill
and a budget only decides how many cells one call runs.

Arms (a trained head is evaluated with top-1 and with dense inference from one encoder pass):
  base              the encoder untouched, scored by the similarity it declares (cosine for all three)
  finetune          fine-tuned, no head
  paper             SB-MoE as published: x + normalize(w_i E_i(x)), noisy top-1; its router gets no gradient
  scaled            x + w_i normalize(E_i(x)), noisy top-1 (trainable gate)
  dense             dense softmax mixture in training (trainable gate)
  straight_through  hard top-1 forward, softmax gradient (trainable gate)
  gumbel            hard Gumbel-softmax top-1 (trainable gate)
  random            a uniformly random expert in training and inference (control)
  single            E = 1: the same adapter shape, no routing (control: "more parameters")
  frozen-router     scaled gate whose router keeps its random initialisation (control)
  head-only         scaled gate trained on frozen, cached base embeddings
  scaled-e3/-e12    the E sweep of the scaled gate
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from report import machine_line, save_png

from sbmoe.atomic import atomic_file, write_json
from sbmoe.data import BeirDataset
from sbmoe.evaluation.metrics import per_query, retrieval_depth
from sbmoe.evaluation.routing import dataset_routing
from sbmoe.evaluation.significance import compare_to_baseline
from sbmoe.evaluation.systems import dense_system
from sbmoe.models.embedding_cache import CorpusEmbeddingCache
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.pipeline import sbmoe_heads
from sbmoe.training.config import TrainConfig
from sbmoe.training.trainer import make_heads, train

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "sbmoe_zero_shot"
DATASETS = ["scifact", "arguana", "cranfield", "cacm", "msmarco-dl19-mini"]
METRIC = "nDCG@10"
POOLED = "five datasets"  # the significance test pools every query of the five sets
ENCODER_NOTES = {"minilm-l3": "paraphrase-MiniLM-L3-v2 (3 layers, real checkpoint)",
                 "minilm-l2": "all-MiniLM-L6-v2 truncated to its first 2 layers (a truncation, not a trained model)",
                 "minilm": "all-MiniLM-L6-v2 (6 layers, strong retrieval encoder)"}
# the similarity each encoder's rows are trained and scored with (sbmoe train: the model's own normalisation)
SIMILARITY_NOTES = {
    "minilm-l3": "Similarity: base is scored by cosine, as paraphrase-MiniLM-L3-v2 declares (it has no Normalize "
                 "layer; scored with raw inner products it gives 0.4646 / 0.2871 / 0.2766 / 0.0954 / 0.7204, average "
                 "0.3688). Every trained arm was "
                 "trained with unnormalised dot products at temperature 1 and scored with them: base against any "
                 "other row compares a cosine base with a dot-product model.",
    "minilm-l2": "Similarity: cosine for every row (the truncation keeps all-MiniLM-L6-v2's Normalize layer; "
                 "trained at temperature 0.05).",
    "minilm": "Similarity: cosine for every row (Normalize layer; trained at temperature 0.05).",
}
# arm -> TrainConfig settings (None: no training). Order = the order cells run in, cheapest signal first.
ARMS: dict[str, dict | None] = {
    "base": None,
    "finetune": {"moe": "none"},
    "scaled": {"gate": "scaled"},
    "dense": {"gate": "dense"},
    "straight_through": {"gate": "straight_through"},
    "gumbel": {"gate": "gumbel"},
    "paper": {"gate": "paper"},
    "random": {"gate": "scaled", "moe": "random"},
    "single": {"gate": "scaled", "experts": 1},
    "frozen-router": {"gate": "scaled", "freeze_router": True},
    "head-only": {"gate": "scaled", "freeze_encoder": True},
    "scaled-e3": {"gate": "scaled", "experts": 3},
    "scaled-e12": {"gate": "scaled", "experts": 12},
}
# the strong encoder is the most expensive to re-encode: by default only the arms the claim needs
L6_ARMS = ["base", "finetune", "scaled", "dense", "paper", "single"]


def cell_name(encoder: str, arm: str, seed: int | None) -> str:
    return f"{encoder}__{arm}" + ("" if seed is None else f"__s{seed}")


@contextmanager
def cache_at(root: Path):
    """Point sbmoe's cache at ``root`` for the block (a trained encoder's corpus embeddings are used once)."""
    old = os.environ.get("SBMOE_CACHE")
    os.environ["SBMOE_CACHE"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SBMOE_CACHE", None)
        else:
            os.environ["SBMOE_CACHE"] = old


def evaluate_model(model, name: str, modes: list[str | None], batch_size: int) -> dict:
    """Per dataset and inference mode: mean nDCG@10, R@100, per-query nDCG@10; and routing statistics."""
    config = EncoderConfig(model=name, batch_size=batch_size, backend="torch")
    heads = sbmoe_heads(model)
    system = dense_system(config, show_progress=False, model=model, cache_pooled=bool(heads))
    depth = retrieval_depth([METRIC, "R@100"])
    out: dict = {"modes": {}, "routing": {}}
    for dataset_name in DATASETS:
        dataset = BeirDataset.open(dataset_name)
        queries, qrels = dataset.load_split()
        for mode in modes:
            for head in heads:
                head.mode = mode
            run = system(dataset, queries, depth)
            ndcg = per_query(qrels, run, METRIC)
            recall = per_query(qrels, run, "R@100")
            out["modes"].setdefault(mode or "-", {})[dataset_name] = {
                METRIC: statistics.mean(ndcg.values()), "R@100": statistics.mean(recall.values()),
                "per_query": {q: round(v, 5) for q, v in ndcg.items()}}
        if heads:
            for head in heads:
                head.mode = "top1"
            routing = dataset_routing(model, dataset, None, batch_size, CorpusEmbeddingCache(), False)
            out["routing"][dataset_name] = routing.__dict__
    return out


def router_shift(config: TrainConfig, model, dim: int) -> float | None:
    """||router weights - their initialisation|| / ||initialisation|| (the init is rebuilt from the seed)."""
    heads = sbmoe_heads(model)
    if not heads:
        return None
    from transformers import set_seed

    set_seed(config.seed)
    init = make_heads(config, dim)
    before = torch.cat([p.detach().flatten() for p in init.router.parameters()])
    after = torch.cat([p.detach().flatten().cpu() for p in heads[0].router.parameters()])
    return float((after - before).norm() / before.norm())


def run_cell(encoder: str, arm: str, seed: int | None, args: argparse.Namespace, work: Path) -> dict:
    settings = ARMS[arm]
    started = time.perf_counter()
    record: dict = {"encoder": encoder, "arm": arm, "seed": seed, "machine": machine_line(),
                    "settings": {k: getattr(args, k) for k in ("epochs", "batch_size", "train_max_length",
                                                                "dev_fraction")}}
    if settings is None:
        model = load_encoder(EncoderConfig(model=encoder, batch_size=args.batch_size, backend="torch"))
        record.update(evaluate_model(model, encoder, [None], args.batch_size))
        record["minutes"] = round((time.perf_counter() - started) / 60, 2)
        return record
    config = TrainConfig(model=encoder, output=work / "model", data="scifact", split="train",
                         batch_size=args.batch_size, epochs=args.epochs, max_length=args.train_max_length,
                         seed=seed, dev_fraction=args.dev_fraction, show_progress=False,
                         **{"moe": "top1", **settings})
    train(config)
    record["train_minutes"] = round((time.perf_counter() - started) / 60, 2)
    summary = json.loads((work / "model" / "sbmoe_train.json").read_text(encoding="utf-8"))
    record["best_dev_ndcg10"] = summary["best_dev_ndcg10"]
    record["aux_loss_weight"] = config.resolved_aux_loss_weight()
    model = load_encoder(EncoderConfig(model=str(work / "model"), batch_size=args.batch_size, backend="torch"))
    record["router_shift"] = router_shift(config, model, model.get_embedding_dimension())
    if settings.get("moe") in ("none", "random"):
        modes = [None if settings["moe"] == "none" else "random"]
    else:  # with one expert, top-1 and dense inference are the same computation: evaluate it once
        modes = ["top1"] if settings.get("experts") == 1 else ["top1", "all"]
    if settings.get("freeze_encoder"):  # the encoder is the base one: its pooled embeddings are cached
        record.update(evaluate_model(model, f"{encoder}-head-only", modes, args.batch_size))
    else:
        with cache_at(work / "cache"):
            record.update(evaluate_model(model, f"{encoder}-{arm}", modes, args.batch_size))
    record["minutes"] = round((time.perf_counter() - started) / 60, 2)
    return record


def plan(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    cells = []
    for encoder in args.encoders:
        arms = [a for a in (args.arms or (L6_ARMS if encoder == "minilm" else list(ARMS)))]
        for seed in args.seeds:  # seed-major: a cut-short grid is a set of complete comparisons
            for arm in arms:
                if ARMS[arm] is None and seed != args.seeds[0]:
                    continue
                cells.append((encoder, arm, None if ARMS[arm] is None else seed))
    return cells


def run_grid(args: argparse.Namespace) -> None:
    cells_dir = OUT / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    started, last = time.perf_counter(), 0.0
    for encoder, arm, seed in plan(args):
        path = cells_dir / f"{cell_name(encoder, arm, seed)}.json"
        if path.exists():
            continue
        elapsed = (time.perf_counter() - started) / 60
        if args.budget_minutes and elapsed + last > args.budget_minutes:
            print(f"budget reached after {elapsed:.1f} min; next cell {path.stem}")
            return
        cell_start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sbmoe-cell-", dir=args.work_dir) as work:
            record = run_cell(encoder, arm, seed, args, Path(work))
        write_json(path, record)
        last = (time.perf_counter() - cell_start) / 60
        summary = {m: round(statistics.mean(d[METRIC] for d in r.values()), 4) for m, r in record["modes"].items()}
        print(f"{path.stem}: {last:.1f} min, mean {METRIC} {summary}", flush=True)


def load_cells() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((OUT / "cells").glob("*.json"))]


def judged_queries() -> dict[str, list[str]]:
    """Every judged test query per dataset, as the loader counts them now."""
    return {name: list(BeirDataset.open(name).load_split()[1]) for name in DATASETS}


def system_rows(cells: list[dict]) -> dict[tuple[str, str], dict[int | None, dict]]:
    """(encoder, system) -> seed -> {dataset: metrics}; a system is an arm with its inference mode.

    nDCG@10 means are recomputed from the per-query values over every judged query, a query missing from a
    cell scoring 0: cells written before the loader kept judgements of documents absent from the corpus
    (5 ArguAna queries, whose relevant documents no system can retrieve) lack those queries, which score
    0 for every run, so all cells are averaged over the same queries.
    """
    judged = judged_queries()
    rows: dict[tuple[str, str], dict] = {}
    for cell in cells:
        for mode, datasets in cell["modes"].items():
            system = cell["arm"] if mode in ("-", "random") else f"{cell['arm']}:{mode}"
            for name, result in datasets.items():
                result["per_query"] = {q: result["per_query"].get(q, 0.0) for q in judged[name]}
                result[METRIC] = statistics.mean(result["per_query"].values())
            rows.setdefault((cell["encoder"], system), {})[cell["seed"]] = datasets
    return rows


def pooled_seeds(by_seed: dict) -> list[dict]:
    """One seed group for ``compare_to_baseline``: per seed, every query of the five sets as one pooled
    dataset (query ids prefixed by their dataset), per-query nDCG@10."""
    return [{POOLED: {METRIC: {f"{name}/{q}": v for name in DATASETS for q, v in datasets[name]["per_query"].items()}}}
            for datasets in by_seed.values()]


def summarize() -> dict:
    cells = load_cells()
    rows = system_rows(cells)
    table = []
    for (encoder, system), by_seed in sorted(rows.items()):
        complete = all(set(DATASETS) <= set(d) for d in by_seed.values())
        entry = {"encoder": encoder, "system": system, "seeds": sorted(s for s in by_seed if s is not None),
                 "datasets": {}}
        for dataset in DATASETS:
            values = [d[dataset][METRIC] for d in by_seed.values() if dataset in d]
            entry["datasets"][dataset] = {"mean": statistics.mean(values) if values else None,
                                          "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        avg_by_seed = [statistics.mean(d[x][METRIC] for x in DATASETS) for d in by_seed.values()
                       if set(DATASETS) <= set(d)]
        entry["average"] = {"mean": statistics.mean(avg_by_seed) if avg_by_seed else None,
                            "std": statistics.stdev(avg_by_seed) if len(avg_by_seed) > 1 else 0.0}
        reference = rows.get((encoder, "finetune"))
        if complete and reference and system != "finetune":
            seeds = sorted(set(by_seed) & set(reference), key=str)
            if seeds or system == "base":
                mine = {s: by_seed[s] for s in (seeds or by_seed)}
                ref = {s: reference[s] for s in (seeds or reference)}
                # per-query nDCG@10, averaged over seeds, every query of the 5 sets: sbmoe's significance API
                test = compare_to_baseline({"finetune": pooled_seeds(ref), system: pooled_seeds(mine)},
                                           baseline="finetune", test="randomization", correction="none")
                vs = test.comparison(system, POOLED, METRIC)
                delta = statistics.mean(statistics.mean(mine[s][d][METRIC] for d in DATASETS) for s in mine) \
                    - statistics.mean(statistics.mean(ref[s][d][METRIC] for d in DATASETS) for s in ref)
                entry["vs_finetune"] = {"delta_average": delta, "paired_seeds": seeds,
                                        "p_value_queries": vs.p_values["randomization"], "queries": vs.queries}
        routing = [c for c in cells if c["encoder"] == encoder and c.get("routing")
                   and system.split(":")[0] == c["arm"]]
        if routing:
            entropies = [c["routing"]["scifact"]["normalized_entropy"] for c in routing  # undefined for E = 1
                         if "scifact" in c["routing"] and c["routing"]["scifact"]["num_experts"] > 1]
            entry["routing"] = {
                "scifact_entropy_over_lnE": statistics.mean(entropies) if entropies else None,
                "co_routing": {d: statistics.mean(c["routing"][d]["co_routing"] for c in routing if d in c["routing"])
                               for d in DATASETS if any(d in c["routing"] for c in routing)},
                "router_shift": statistics.mean(c["router_shift"] for c in routing if c.get("router_shift") is not None)
                if any(c.get("router_shift") is not None for c in routing) else None}
        table.append(entry)
    result = {"metric": METRIC, "datasets": DATASETS, "encoders": ENCODER_NOTES, "machine": machine_line(),
              "cells_done": [p.stem for p in sorted((OUT / "cells").glob("*.json"))], "systems": table}
    write_json(RESULTS / "sbmoe_zero_shot.json", result)
    with atomic_file(RESULTS / "sbmoe_zero_shot.md") as handle:
        handle.write(markdown(result))
    plot(result)
    print(markdown(result))
    return result


def fmt(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{cell['mean']:.4f}" + (f" ± {cell['std']:.4f}" if cell["std"] else "")


def markdown(result: dict) -> str:
    lines = ["# SB-MoE with trainable gates vs fine-tuning (nDCG@10)", "",
             "Trained on SciFact train (1 epoch); SciFact test in-domain, the rest zero-shot. Mean ± std over "
             "seeds; Δ avg and p against finetune: difference of the 5-dataset average, and a paired "
             "randomization test (10,000 sign flips) over every query of the five sets (per-query nDCG@10 "
             "averaged over the paired seeds). `arm:top1` / `arm:all` are one trained model with top-1 or "
             "dense inference. H/lnE: SciFact test document-routing entropy over ln E; shift: relative "
             "change of the router's weights from initialisation.", "", f"Machine: {result['machine']}.", ""]
    for encoder in dict.fromkeys(e["encoder"] for e in result["systems"]):
        lines += [f"## {encoder}: {result['encoders'].get(encoder, encoder)}", "",
                  *([SIMILARITY_NOTES[encoder], ""] if encoder in SIMILARITY_NOTES else []),
                  "| system | seeds | " + " | ".join(result["datasets"]) + " | average | Δ avg | p | H/lnE | shift |",
                  "|---|---|" + "---|" * (len(result["datasets"]) + 5)]
        for e in (x for x in result["systems"] if x["encoder"] == encoder):
            vs = e.get("vs_finetune", {})
            routing = e.get("routing", {})
            lines.append("| " + " | ".join([
                e["system"], str(len(e["seeds"]) or "-"), *(fmt(e["datasets"][d]) for d in result["datasets"]),
                fmt(e["average"]), f"{vs['delta_average']:+.4f}" if vs else "",
                f"{vs['p_value_queries']:.3g}" if vs else "",
                f"{routing['scifact_entropy_over_lnE']:.2f}" if routing.get("scifact_entropy_over_lnE") else "",
                f"{routing['router_shift']:.3f}" if routing.get("router_shift") is not None else ""]) + " |")
        lines.append("")
    lines += ["Cells done: " + ", ".join(result["cells_done"]), ""]
    return "\n".join(lines)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(e["encoder"] for e in result["systems"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(5.5 * len(encoders), 4.2), squeeze=False)
    for ax, encoder in zip(axes[0], encoders, strict=True):
        rows = [e for e in result["systems"] if e["encoder"] == encoder and e["average"]["mean"] is not None]
        ax.barh([e["system"] for e in rows], [e["average"]["mean"] for e in rows],
                xerr=[e["average"]["std"] for e in rows], color=["tab:gray" if e["system"] in ("base", "finetune")
                                                                 else "tab:blue" for e in rows])
        ax.set_title(encoder, fontsize=9)
        ax.set_xlabel("nDCG@10, average of 5 datasets")
        ax.tick_params(axis="y", labelsize=7)
        values = [e["average"]["mean"] for e in rows]
        if values:
            ax.set_xlim(max(0.0, min(values) - 0.03), max(values) + 0.02)
    save_png(fig, RESULTS / "sbmoe_zero_shot.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="minilm-l3,minilm-l2,minilm")
    parser.add_argument("--arms", default=None, help="Comma-separated arms (default: all; a subset for minilm).")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-max-length", type=int, default=128)
    parser.add_argument("--dev-fraction", type=float, default=0.0, help="Training queries held out as dev.")
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--work-dir", default=None, help="Where a cell's model and embeddings live while it runs.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--summarize", action="store_true", help="Only rebuild the tables from the cells.")
    args = parser.parse_args()
    args.encoders = [e for e in args.encoders.split(",") if e]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.arms = [a for a in args.arms.split(",") if a] if args.arms else None
    unknown = set(args.arms or []) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms: {', '.join(sorted(unknown))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.summarize:
        run_grid(args)
    if any((OUT / "cells").glob("*.json")):
        summarize()


if __name__ == "__main__":
    main()
