"""SB-MoE vs plain fine-tuning vs the base model, at CPU scale (the paper's comparison, small).

    python eval/sbmoe_vs_base.py [--model minilm] [--seeds 0,1,2] [--epochs 1] [--train-max-length 128]

Arms, each trained on the SciFact train split (10% of its queries held out as dev) and evaluated
zero-shot on every BEIR-layout test set in ../shared/data (SciFact test, Cranfield):
  (a) finetune        fine-tuned, no MoE head
  (b) sbmoe-top1      fine-tuned with the SB-MoE head, top-1 routing at inference
  (c) sbmoe-all       the same trained model as (b), dense routing at inference
  (d) base            the pretrained model untouched (no seed)
  (e) head-only       SB-MoE head (top-1) trained on frozen, cached base embeddings
../shared/data holds no MS MARCO-style triples, so the out-of-domain training arm is not run here.

Writes eval/results/sbmoe_vs_base.json (one record per arm, dataset and seed), sbmoe_vs_base.md
(mean +- std over seeds, paired delta vs (a)) and sbmoe_vs_base.png.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from report import TimeBudget, command_line, machine_line, mean_std, save_png

from sbmoe.atomic import atomic_file, write_json
from sbmoe.evaluation.benchmark import evaluate_systems
from sbmoe.evaluation.systems import dense_system
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.pipeline import sbmoe_heads
from sbmoe.training.config import TrainConfig
from sbmoe.training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ["nDCG@10", "R@100"]
# training run -> (its TrainConfig settings, {arm: SB-MoE inference mode}). The paper's gate trains with
# noisy top-1 routing whatever its inference mode (its router gets no gradient; eval/sbmoe_zero_shot.py
# compares trainable gates), so (b) and (c) are one trained model evaluated twice.
RUNS = {
    "finetune": ({"moe": "none"}, {"finetune": None}),
    "sbmoe": ({"moe": "top1", "gate": "paper"}, {"sbmoe-top1": "top1", "sbmoe-all": "all"}),
    "head-only": ({"moe": "top1", "gate": "paper", "freeze_encoder": True}, {"head-only": "top1"}),
}
ARMS = ["finetune", "sbmoe-top1", "sbmoe-all", "base", "head-only"]


def markdown(records: list[dict], datasets: list[str], arms: list[str], model: str, args_line: str) -> str:
    lines = [f"# SB-MoE vs fine-tuning vs base ({model})", "", f"Command: `{args_line}`", "",
             "Mean ± std over seeds; Δ is the mean paired (same seed) difference to (a) finetune.", ""]
    for metric in METRICS:
        lines += [f"## {metric}", "", "| arm | " + " | ".join(f"{d} | Δ vs finetune" for d in datasets) + " |",
                  "|---|" + "---|---|" * len(datasets)]
        for arm in arms:
            cells = []
            for dataset in datasets:
                mine = {r["seed"]: r[metric] for r in records if r["arm"] == arm and r["dataset"] == dataset}
                ref = {r["seed"]: r[metric] for r in records if r["arm"] == "finetune" and r["dataset"] == dataset}
                cells.append(mean_std(list(mine.values())) if mine else "-")
                if arm == "finetune" or not mine or not ref:
                    cells.append("")
                elif arm == "base":
                    cells.append(f"{list(mine.values())[0] - statistics.mean(ref.values()):+.4f}")
                else:
                    deltas = [mine[s] - ref[s] for s in mine if s in ref]
                    cells.append(f"{statistics.mean(deltas):+.4f}" + (f" ± {statistics.stdev(deltas):.4f}"
                                                                       if len(deltas) > 1 else ""))
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(records: list[dict], datasets: list[str], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        means, stds = [], []
        for dataset in datasets:
            values = [r["nDCG@10"] for r in records if r["arm"] == arm and r["dataset"] == dataset]
            means.append(statistics.mean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.bar([d + i * width for d in range(len(datasets))], means, width, yerr=stds, capsize=3, label=arm)
    ax.set_xticks([d + width * (len(arms) - 1) / 2 for d in range(len(datasets))], datasets)
    ax.set_ylabel("nDCG@10")
    ax.set_title("SB-MoE vs fine-tuning vs base (mean ± std over seeds)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-data", default="scifact")
    parser.add_argument("--datasets", default="scifact,cranfield")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train-max-length", type=int, default=128)
    parser.add_argument("--dev-distractors", type=int, default=300)
    parser.add_argument("--time-budget-min", type=float, default=None,
                        help="Start no run that the last run's duration says would end past this budget.")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = [d for d in args.datasets.split(",") if d]
    arms = [a for a in args.arms.split(",") if a]
    args_line = command_line("eval/sbmoe_vs_base.py", args)

    records: list[dict] = []
    budget = TimeBudget(args.time_budget_min)
    workdir = Path(tempfile.mkdtemp(prefix="sbmoe-vs-base-"))
    try:
        # seed-major order: every finished seed is a complete comparison, so a cut-short run stays usable
        plan = [("base", None)] if "base" in arms else []
        plan += [(run, seed) for seed in seeds for run, (_, modes) in RUNS.items() if set(modes) & set(arms)]
        for run, seed in plan:
            if not budget.start(f"{run}/seed {seed}"):
                continue
            t0 = time.perf_counter()
            if run == "base":
                model_ref, train_info, modes = args.model, {}, {"base": None}
            else:
                settings, modes = RUNS[run]
                out = workdir / f"{run}-{seed}"
                config = TrainConfig(model=args.model, output=out, data=args.train_data, seed=seed,
                                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     max_length=args.train_max_length, dev_distractors=args.dev_distractors,
                                     show_progress=False, **settings)
                train(config)
                model_ref, train_info = str(out), {"train_seconds": round(time.perf_counter() - t0, 1)}
            encoder_config = EncoderConfig(model=model_ref, max_length=256, backend="torch")
            model = load_encoder(encoder_config)
            # pooled corpus embeddings are cached: the base encoder's serve base and head-only, and one
            # encoder pass of a fine-tuned SB-MoE model serves both of its inference modes
            system = dense_system(encoder_config, model=model, show_progress=False, cache_pooled=True)
            for arm, mode in modes.items():
                if arm not in arms:
                    continue
                for head in sbmoe_heads(model):
                    head.mode = mode
                report = evaluate_systems({arm: system}, datasets, METRICS)
                for rec in report.records:
                    records.append({"arm": arm, "dataset": rec.dataset, "seed": seed, **rec.metrics, **train_info})
                    print(f"{arm:<11} seed={seed} {rec.dataset:<10} nDCG@10={rec.metrics['nDCG@10']:.4f} "
                          f"R@100={rec.metrics['R@100']:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                write_json(RESULTS / "sbmoe_vs_base.json", {"partial": True, "settings": vars(args),
                                                             "records": records})
            if run != "base":
                shutil.rmtree(workdir / f"{run}-{seed}", ignore_errors=True)
                shutil.rmtree(workdir / f"{run}-{seed}-checkpoints", ignore_errors=True)
            budget.finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    dataset_names = list(dict.fromkeys(r["dataset"] for r in records))
    table = markdown(records, dataset_names, arms, args.model, args_line)
    if budget.skipped:
        table += f"\n\nNot run within the time budget: {', '.join(budget.skipped)}.\n"
    print("\n" + table)
    write_json(RESULTS / "sbmoe_vs_base.json", {
        "partial": bool(budget.skipped), "skipped": budget.skipped, "model": args.model,
        "train_data": args.train_data, "arms": arms, "seeds": seeds,
        "settings": vars(args), "records": records,
        "total_seconds": round(budget.elapsed(), 1),
        "machine": machine_line(),
    })
    with atomic_file(RESULTS / "sbmoe_vs_base.md") as handle:
        handle.write(table + "\n")
    bar_chart(records, dataset_names, arms, RESULTS / "sbmoe_vs_base.png")


if __name__ == "__main__":
    main()
