"""Summary of the domain-experts grid (eval/domain_experts.py): tables, paired tests and the headline figure.

Reads eval/results/domain_experts/cells/*.json and writes domain_experts.json, domain_experts.md and
domain_experts.png beside them. Tests: per query, the seed mean of nDCG@10; paired t and randomization tests
(sbmoe.evaluation.significance) of the routed model (pilot) and of the other arms against the multi-task expert and
against the base, Holm-corrected over every comparison of a base. The zero-shot mean is tested as one set whose
per-query values are weighted so that their mean is the mean over the four sets, and the in-domain mean likewise;
the Holm family is every arm against the reference on those two means.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ZERO = "zero-shot mean"
IN = "in-domain mean"
HEADLINE_ARMS = ("base", "expert:multitask", "sbmoe:all", "routed:pilot", "routed:average", "routed:gate", "oracle",
                 "best-per-query")


def load_cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}


def arm_tables(cells: dict[str, dict], base: str) -> dict[str, list[dict]]:
    """arm -> one table per seed: {dataset: {"nDCG@10", "R@100", "per_query"}} (the eval cells' arms and the SB-MoE
    head's cells)."""
    arms: dict[str, list[dict]] = {}
    for name, cell in cells.items():
        if name.startswith(f"{base}__s") and name.endswith(("__eval", "__sbmoe")):
            for arm, table in cell["results"].items():
                arms.setdefault(arm, []).append(table)
    return arms


def pooled(tables: list[dict], sets: tuple[str, ...]) -> dict | None:
    """Seed-mean per-query values over ``sets`` as one vector, weighted so its mean is the mean over the sets."""
    if not all(all(s in t for s in sets) for t in tables):
        return None
    parts = []
    total = sum(len(tables[0][s]["per_query"]) for s in sets)
    for s in sets:
        values = np.mean([t[s]["per_query"] for t in tables], axis=0)
        parts.append(values * total / (len(sets) * len(values)))
    return {str(i): float(v) for i, v in enumerate(np.concatenate(parts))}


def test_sets(arms: dict[str, list[dict]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(in-domain, zero-shot) sets as the cells hold them: the oracle arm exists on the in-domain ones only."""
    domains = tuple(arms["oracle"][0]) if "oracle" in arms else ()
    return domains, tuple(s for s in arms["base"][0] if s not in domains)


def scores_for(arms: dict[str, list[dict]]) -> dict:
    """sbmoe.evaluation.significance's input: system -> per-seed {dataset: {"nDCG@10": {qid: value}}}."""
    scores = {}
    domains, zero_shot = test_sets(arms)
    for arm, tables in arms.items():
        groups: list[dict] = [{} for _ in tables]  # tested on the two means only: the Holm family is arms x 2
        for name, sets in ((ZERO, zero_shot), (IN, domains)):
            vector = pooled(tables, sets)
            if vector is not None:
                for group in groups:
                    group[name] = {"nDCG@10": vector}  # already the seed mean: identical in each seed's table
        scores[arm] = groups
    return scores


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(out: Path) -> dict:
    from sbmoe.evaluation.significance import SignificanceConfig, significance

    cells = load_cells(out)
    bases = sorted({n.split("__")[0] for n in cells})
    summary: dict = {"bases": {}, "cells": sorted(cells)}
    lines = ["# Domain experts with retrieval routing (RouterRetriever) vs one multi-task expert", "",
             "nDCG@10, mean ± std over seeds; in-domain: SciFact, MedQuAD, SQuAD test (2,000 sampled queries where a "
             "split has more); zero-shot: ArguAna, Cranfield, CACM, MS MARCO DL19 (mini). Every arm scored by cosine "
             "similarity, as both bases declare. p: paired randomization test, Holm-corrected.", ""]
    for base in bases:
        arms = arm_tables(cells, base)
        if not arms:
            continue
        domains, zero_shot = test_sets(arms)
        rows = {}
        for arm, tables in arms.items():
            row = {}
            for s in (*domains, *zero_shot):
                if all(s in t for t in tables):
                    row[s] = mean_std([t[s]["nDCG@10"] for t in tables])
            for name, sets in ((IN, domains), (ZERO, zero_shot)):
                if all(s in row for s in sets):
                    row[name] = mean_std([float(np.mean([t[s]["nDCG@10"] for s in sets])) for t in tables])
            rows[arm] = {"seeds": len(tables), "nDCG@10": row,
                         "R@100": {s: float(np.mean([t[s]["R@100"] for t in tables]))
                                   for s in tables[0] if "R@100" in tables[0][s]}}
        tests = {}
        scores = scores_for(arms)
        for reference in ("expert:multitask", "base"):
            if reference in scores:
                report = significance(scores, SignificanceConfig(baseline=reference, test="both"))
                tests[reference] = [{"system": c.system, "dataset": c.dataset, "delta": round(c.difference, 5),
                                     "p_randomization": c.p_corrected.get("randomization"),
                                     "p_t": c.p_corrected.get("t")} for c in report.comparisons]
        evals = [c for n, c in cells.items() if n.startswith(f"{base}__s") and n.endswith("__eval")]
        summary["bases"][base] = {
            "arms": rows, "tests": tests,
            "routing_accuracy": [c["routing_accuracy"] for c in evals],
            "expert_usage": [c["expert_usage"] for c in evals],
            "expert_minutes": {n: c["minutes"] for n, c in sorted(
                (k, v) for k, v in cells.items()
                if k.startswith(f"{base}__s") and not k.endswith(("__eval", "__sbmoe")))},
            "sbmoe_head": [{k: c[k] for k in ("seed", "gate", "experts", "epochs", "pairs", "shift", "query_usage")}
                           for n, c in sorted(cells.items()) if n.startswith(f"{base}__s") and n.endswith("__sbmoe")],
            "docs": cells.get(f"{base}__docs", {}).get("encode_minutes"),
            "lr": cells.get(f"{base}__lr", {}).get("lr"),
        }
        lines += [f"## {base}", "", f"LoRA lr {summary['bases'][base]['lr']} (picked on MedQuAD dev); "
                  f"seeds: {max(r['seeds'] for r in rows.values())}.", "",
                  "| arm | " + " | ".join((*domains, IN, *zero_shot, ZERO)) + " |",
                  "|---|" + "---|" * (len(domains) + len(zero_shot) + 2)]
        for arm, row in rows.items():
            cells_text = []
            for s in (*domains, IN, *zero_shot, ZERO):
                if s not in row["nDCG@10"]:
                    cells_text.append("")
                    continue
                mean, std = row["nDCG@10"][s]
                mark = ""
                for c in tests.get("expert:multitask", []):
                    if c["system"] == arm and c["dataset"] == s and c["p_randomization"] is not None \
                            and c["p_randomization"] < 0.05:
                        mark = " †"
                cells_text.append(f"{mean:.4f}" + (f" ± {std:.4f}" if row["seeds"] > 1 else "") + mark)
            lines.append(f"| {arm} ({row['seeds']}) | " + " | ".join(cells_text) + " |")
        lines += ["", "† differs from the multi-task expert (p < 0.05, randomization, Holm).", ""]
        heads = summary["bases"][base]["sbmoe_head"]
        if heads:
            lines += ["`sbmoe:top1` / `sbmoe:all`: the SB-MoE head that did best on SciFact (the scaled gate, E = "
                      f"{heads[0]['experts']}; [sbmoe_zero_shot.md](../sbmoe_zero_shot.md)) trained on the multi-task "
                      f"expert's {heads[0]['pairs']:,} pairs over frozen base embeddings, on queries and documents "
                      f"({heads[0]['epochs']} epochs, in-batch negatives, cosine at temperature 0.05), read with top-1 "
                      "and with dense routing; its router moved by " + ", ".join(
                          f"{h['shift']['router']:.2f}" for h in heads) + " and its experts by " + ", ".join(
                          f"{h['shift']['experts']:.2f}" for h in heads) + " of their initial norm (per seed).", ""]
        for record in summary["bases"][base]["routing_accuracy"]:
            lines.append("Routing accuracy (share of in-domain test queries sent to their own expert): " + "; ".join(
                f"{mode}: " + ", ".join(f"{d} {v:.2f}" for d, v in acc.items()) for mode, acc in record.items()))
        lines.append("")
    lines += cost_lines(out, cells)
    (out / "domain_experts.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "domain_experts.md").write_text("\n".join(lines) + "\n")
    plot(summary, out / "domain_experts.png")
    return summary


def cost_lines(out: Path, cells: dict[str, dict]) -> list[str]:
    """Minutes per finished cell against the plan's estimate, and the routed model's query latency."""
    lines = ["## Cost", ""]
    plan_file = out / "plan.json"
    if plan_file.exists():
        estimates = json.loads(plan_file.read_text()).get("estimates", {})
        pairs = [(n, c["cell_minutes"], estimates[n]) for n, c in cells.items()
                 if "cell_minutes" in c and estimates.get(n)]
        if pairs:
            measured, estimated = sum(p[1] for p in pairs), sum(p[2] for p in pairs)
            lines += [f"{len(pairs)} finished cells took {measured:.0f} min against {estimated:.0f} min estimated "
                      f"({measured / estimated:.2f}x; per cell {min(p[1] / p[2] for p in pairs):.2f}x to "
                      f"{max(p[1] / p[2] for p in pairs):.2f}x): [plan.md](plan.md).", ""]
    for latency_file in sorted(out.glob("latency*.json")):  # one per base model (bench_routed.py --name)
        latency = json.loads(latency_file.read_text())
        stats = latency["stats"]
        lines += [f"Query latency, one query at a time ({latency['base_model']}, {latency['dataset']}, "
                  f"{latency['backend']}): base p50 {stats['base']['p50_ms']:.1f} ms; " + ", ".join(
                      f"{m} {v['p50_ms']:.1f} ms ({v['p50_over_base']:.2f}x)" for m, v in stats.items() if m != "base")
                  + f" ([{latency_file.stem}.md]({latency_file.stem}.md)).", ""]
    return lines


def plot(summary: dict, path: Path) -> None:
    """The headline: per base, in-domain and zero-shot mean nDCG@10 of the arms that answer the question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = [b for b in summary["bases"] if summary["bases"][b]["arms"]]
    if not bases:
        return
    fig, axes = plt.subplots(1, len(bases), figsize=(5.2 * len(bases), 3.6), squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        arms = [a for a in HEADLINE_ARMS if a in summary["bases"][base]["arms"]]
        for offset, (key, colour) in enumerate(((IN, "#4c72b0"), (ZERO, "#dd8452"))):
            values = [summary["bases"][base]["arms"][a]["nDCG@10"].get(key, (np.nan, 0)) for a in arms]
            ax.bar(np.arange(len(arms)) + offset * 0.4, [v[0] for v in values], 0.4,
                   yerr=[v[1] for v in values], color=colour, label=key)
        ax.set_xticks(np.arange(len(arms)) + 0.2, [a.replace("expert:", "").replace("routed:", "routed ")
                                                   for a in arms], rotation=30, ha="right", fontsize=8)
        ax.set_title(base, fontsize=10)
        ax.set_ylabel("nDCG@10")
        ax.legend(fontsize=8)
    fig.suptitle("Routed domain experts vs one multi-task expert", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
