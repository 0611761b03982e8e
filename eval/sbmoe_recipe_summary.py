"""Tables, tests and plots of the paper-recipe grid (eval/sbmoe_recipe.py) from the cells written so far.

    python eval/sbmoe_recipe.py --summarize

Writes eval/results/sbmoe_recipe.{json,md,png}. Systems are an arm with its inference mode (``paper:top1``,
``paper:all``, ...); three seeds form a seed group (mean +- std over seeds; tests on each query's nDCG@10
averaged over the seeds). Every system is tested against the untouched encoder (``base``) and against the
E = 1 adapter of its own tier (``single`` for tier H, ``E-single`` for tier E: a gain that E = 1 also has is
not routing; tier H's until E-single ran) and, once tier E ran, against fine-tuning at its best lr
(``E-ft@lr``), per dataset, with a paired two-sided t-test and a paired randomization test, Holm-corrected over
systems x datasets (sbmoe.evaluation.significance).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection
from pathlib import Path

from recipe_cells import FT_LRS, ft_arm, unpack

from sbmoe.atomic import atomic_file, write_json
from sbmoe.evaluation.significance import compare_to_baseline

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CELLS = RESULTS / "sbmoe_recipe" / "cells"
METRIC = "nDCG@10"
ZERO_SHOT = "zero-shot mean"


def load_cells(folder: Path = CELLS) -> list[dict]:
    return [unpack(json.loads(p.read_text(encoding="utf-8")), folder.parent) for p in sorted(folder.glob("*.json"))]


def system_name(arm: str, mode: str, modes: Collection[str]) -> str:
    """The arm alone where it was evaluated in one mode only (base, fine-tuning, E = 1, random), else
    ``arm:mode``."""
    return arm if len(modes) == 1 else f"{arm}:{mode}"


def macro_table(tables: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-query scores of several datasets as one pseudo-dataset whose mean is the mean of the dataset means:
    each query weighted by N / (D n_d) (N queries in all, D datasets, n_d in its own). Paired tests on it are
    tests of the macro average; sign flips of these weighted differences are a randomization test stratified
    by dataset."""
    total = sum(len(t) for t in tables.values())
    return {f"{d}/{q}": v * total / (len(tables) * len(t)) for d, t in tables.items() for q, v in t.items()}


def groups(base: list[dict], trained: list[dict]) -> dict[str, list[dict]]:
    """system -> one {dataset: {metric: per-query}} table per seed, from one (encoder, set)'s trained cells and
    the encoder's ``base`` cells, restricted to the datasets the trained arms were evaluated on; with zero-shot
    sets, a ``ZERO_SHOT`` pseudo-dataset of their macro average (``macro_table``)."""
    out: dict[str, list[dict]] = {}
    datasets = list(dict.fromkeys(d for c in trained for r in c["modes"].values() for d in r))
    for cell in base + trained:
        for mode, results in cell["modes"].items():
            table = {d: {METRIC: results[d]["per_query"]} for d in datasets if d in results}
            if len(datasets) > 1 and all(d in table for d in datasets):
                table[ZERO_SHOT] = {METRIC: macro_table({d: table[d][METRIC] for d in datasets[1:]})}
            out.setdefault(system_name(cell["arm"], mode, cell["modes"]), []).append(table)
    return out


def set_order(train_set: str) -> tuple[int, int]:
    """scifact, medquad, squad, then the SQuAD subsets by size."""
    name, _, size = train_set.partition("@")
    return (["scifact", "medquad", "squad"].index(name) if not size else 3, int(size or 0))


def finetune_system(trained: list[dict]) -> str | None:
    """Tier E's fine-tuning arm at its best lr among one (encoder, set)'s cells: the best last-epoch dev nDCG@10
    of the lr search (seed 0), as eval/sbmoe_recipe_encoder.py chooses it; None until every lr of the search
    has its cell."""
    dev = {c["arm"]: c["dev_curve"][-1]["dev_ndcg10"] for c in trained
           if c["arm"].startswith("E-ft@") and c["seed"] == 0 and c.get("dev_curve")}
    if set(dev) != {f"E-{ft_arm(lr)}" for lr in FT_LRS}:
        return None
    return max(dev, key=dev.get)


def summarize(cells_folder: Path = CELLS, results: Path = RESULTS) -> dict:
    cells = load_cells(cells_folder)
    report: dict = {"cells": len(cells), "experiments": []}
    lines = ["# SB-MoE under the paper's recipe (tier H: the head at full scale, encoder frozen; tier E, arms "
             "`E-*`: the encoder trained under the recipe, `E-ft@lr` plain fine-tuning)", "",
             "Produced by `python eval/sbmoe_recipe.py --summarize` from the cells in "
             "`eval/results/sbmoe_recipe/cells/` (each records its machine, threads, load and package versions). "
             "nDCG@10, mean ± std over seeds; marks: ‡ paired randomization test and † paired t-test, "
             "Holm-corrected over systems x datasets, alpha 0.05, against the untouched encoder (base); in "
             "parentheses against E = 1 of the same tier (tier E arms against `E-single` once it ran) and, where "
             "tier E ran, against fine-tuning at its best lr (FT). The zero-shot "
             "mean is the mean of the zero-shot sets' means, tested as one pseudo-dataset of their queries weighted "
             "so that its mean is that average (a randomization test stratified by dataset). Tier H (and base) "
             "embed every text at the encoder's own max length, not the recipe's 512: 128 tokens for minilm-l3 "
             "(paraphrase-MiniLM-L3-v2), 256 for minilm-l2 and minilm; tier E at the length it trained at (below).",
             "", "Similarity: `base` and `E-base` score the untouched encoder by the similarity it declares, cosine "
             "for all three encoders (minilm-l3 has no Normalize layer: its embeddings are L2-normalised for the "
             "search; minilm-l2 and minilm end in Normalize). Every trained arm of both tiers (heads and `E-ft@lr`) "
             "was trained with unnormalised dot products at temperature 1, the recipe's, and is scored with them: "
             "every comparison with `base` or `E-base` sets a cosine base against a dot-product model. Scored with "
             "raw inner products instead, minilm-l3's base gives SciFact 0.4646, MedQuAD 0.3950, SQuAD 0.4776 "
             "(E-base: SciFact 0.4658 at 256 tokens, SQuAD 0.4313 at 512). One untouched-encoder row is still "
             "scored by raw inner products and says so: E-base of minilm-l3 on MedQuAD (512 tokens, run on an "
             "H200; its rescoring re-embeds seven corpora at 512 tokens, hours on the 2-core CPU).", ""]
    for encoder in sorted({c["encoder"] for c in cells}):
        base = [c for c in cells if c["encoder"] == encoder and c["arm"] == "base"]
        train_sets = {c["train_set"] for c in cells if c["encoder"] == encoder and c.get("train_set")}
        for train_set in sorted(train_sets, key=set_order):
            here = [c for c in cells if c["encoder"] == encoder and c.get("train_set") == train_set]
            scores = groups(base, here)
            if "base" not in scores:
                continue
            datasets = list(next(iter(here[0]["modes"].values())))
            vs_base = compare_to_baseline(scores, baseline="base", test="both", correction="holm")
            vs_single = {tier: compare_to_baseline(scores, baseline=name, test="both", correction="holm")
                         for tier, name in (("H", "single"), ("E", "E-single")) if name in scores}
            e_single = "E" if "E" in vs_single else "H"  # tier E's own E = 1 once it ran
            finetune = finetune_system(here)
            vs_ft = (compare_to_baseline(scores, baseline=finetune, test="both", correction="holm")
                     if finetune else None)
            report["experiments"].append({"encoder": encoder, "train_set": train_set, "datasets": datasets,
                                          "vs_base": vs_base.to_json(),
                                          "vs_single": {t: r.to_json() for t, r in vs_single.items()},
                                          "finetune": finetune, "vs_finetune": vs_ft.to_json() if vs_ft else None})
            zero_shot = datasets[1:]
            lines += [f"## {encoder} trained on {train_set}", "",
                      "| system | seeds | " + " | ".join(datasets) + (f" | {ZERO_SHOT} |" if zero_shot else "|"),
                      "|---|---|" + "---|" * len(datasets) + ("---|" if zero_shot else "")]
            for system in scores:
                cells_md = []
                for d in datasets + ([ZERO_SHOT] if zero_shot else []):
                    s = vs_base.summary(system, d, METRIC)
                    if s is None:
                        cells_md.append("")
                        continue
                    marks = vs_base.mark(system, d, METRIC)
                    own = vs_single.get(e_single if system.startswith("E-") else "H")
                    single_marks = own.mark(system, d, METRIC) if own else ""
                    text = f"{s.mean:.4f}" + (f" ± {s.std:.4f}" if s.seeds > 1 else "")
                    text += f" {marks}" if marks else ""
                    text += f" (vs E=1: {single_marks})" if single_marks else ""
                    ft_marks = vs_ft.mark(system, d, METRIC) if vs_ft else ""
                    text += f" (vs FT: {ft_marks})" if ft_marks else ""
                    cells_md.append(text)
                seeds = max(len(scores[system]), 1)
                label = system
                if system == "E-base" and any("similarity" not in c for c in here if c["arm"] == "E-base"):
                    label = "E-base (dot: not yet rescored by cosine)"  # a cell from before the similarity issue
                lines.append(f"| {label} | {seeds} | " + " | ".join(cells_md) + " |")
            dev = {}
            for c in here:
                if c.get("dev_curve"):
                    dev.setdefault(c["arm"], []).append(c["dev_curve"][-1]["dev_ndcg10"])
            if finetune:
                lines += ["", f"FT is {finetune}: the best last-epoch dev nDCG@10 of tier E's lr search."]
            if any(system.startswith("E-") for system in scores):
                lines += ["", "Tier E arms are marked against E = 1 of " + (
                    "tier E (E-single)." if e_single == "E" else "tier H (single): E-single has not run yet.")]
            lines += ["", "Dev nDCG@10 after the last epoch (mean over seeds): " + ", ".join(
                f"{arm} {statistics.mean(v):.4f}" for arm, v in dev.items()), ""]
            settings = sorted({(c["options"]["max_length"], c["options"].get("precision", "fp32"), c["device"])
                               for c in here if c.get("tier") == "E" and c.get("dev_curve")})
            if settings:
                lines += ["Tier E trained at " + "; ".join(f"max length {length}, encoder steps in {precision}, "
                                                           f"on {device}" for length, precision, device in settings)
                          + " (tier H: embeddings at the encoder's own max length, fp32).", ""]
            base_settings = sorted({(c["options"]["max_length"], c["device"]) for c in here if c["arm"] == "E-base"})
            if base_settings:
                lines += ["E-base (the untouched encoder, tier E's starting point) embedded at " + "; ".join(
                    f"max length {length} on {device}" for length, device in base_settings) + ".", ""]
            routing = {}
            for c in here:
                if c.get("routing"):
                    r = c["routing"][train_set.split("@")[0]]
                    routing.setdefault(c["arm"], []).append((r["usage_entropy_ln_e"], r["same_expert_share"],
                                                             r["chance_share"]))
            if routing:
                lines += ["Routing on the in-domain test set (top-1 expert): usage entropy of the documents in "
                          "units of ln E / share of (query, relevant document) pairs sent to the same expert / "
                          "that share by chance: " + "; ".join(
                              f"{arm} {statistics.mean(x[0] for x in v):.2f} / {statistics.mean(x[1] for x in v):.2f}"
                              f" / {statistics.mean(x[2] for x in v):.2f}" for arm, v in routing.items()), ""]
    lines += ["Legend (vs base): " + (report["experiments"][0]["vs_base"]["legend"] if report["experiments"] else "")]
    write_json(results / "sbmoe_recipe.json", report)
    with atomic_file(results / "sbmoe_recipe.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    plot(cells, results / "sbmoe_recipe.png")
    return report


def plot(cells: list[dict], path: Path) -> None:
    """Dev nDCG@10 per epoch for every trained cell, one panel per (encoder, training set); and the scale
    curve: SQuAD test nDCG@10 against the number of training queries, per system (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from report import save_png

    panels = sorted({(c["encoder"], c["train_set"]) for c in cells if c.get("dev_curve")},
                    key=lambda p: (p[0], set_order(p[1])))
    if not panels:
        return
    columns = 4
    rows = -(-(len(panels) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    colors: dict[str, tuple] = {}  # one colour per arm across panels; 20 so tier H's and tier E's arms differ
    for ax, (encoder, train_set) in zip(flat, panels, strict=False):
        for c in cells:
            if (c["encoder"], c.get("train_set")) == (encoder, train_set) and c.get("dev_curve"):
                color = colors.setdefault(c["arm"], plt.get_cmap("tab20")(len(colors) % 20))
                ax.plot([p["epoch"] for p in c["dev_curve"]], [p["dev_ndcg10"] for p in c["dev_curve"]],
                        color=color, alpha=0.7, linestyle="--" if c["arm"].startswith("E-") else "-",
                        label=c["arm"] if c["seed"] == 0 else None)
        ax.set_title(f"{encoder} on {train_set}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev nDCG@10")
        ax.legend(fontsize=7)
    scale = flat[len(panels)]
    points: dict[str, dict[int, list[float]]] = {}
    for c in cells:
        name, _, size = (c.get("train_set") or "").partition("@")
        if name != "squad":
            continue
        queries = int(size) if size else c.get("train_queries", 0)
        for mode, results in c["modes"].items():
            system = system_name(c["arm"], mode, c["modes"])
            points.setdefault(system, {}).setdefault(queries, []).append(results["squad"][METRIC])
    for system, by_size in sorted(points.items()):
        sizes = sorted(by_size)
        scale.plot(sizes, [statistics.mean(by_size[n]) for n in sizes], marker="o", label=system)
    scale.set_xscale("log")
    scale.set_title("scale curve: SQuAD test", fontsize=9)
    scale.set_xlabel("training queries")
    scale.set_ylabel("nDCG@10")
    scale.legend(fontsize=7)
    for ax in flat[len(panels) + 1:]:
        ax.axis("off")
    save_png(fig, path)
