"""Layer-local MoE vs ReXMoE (cross-layer expert reuse) with and without progressive scaling routing.

    python eval/rexmoe.py [--seeds 0,1,2] [--steps 500] [--arms local,rex-r2,rex-r2-psr,rex-r4,rex-r4-psr]

Every arm is the same tiny decoder-only MoE LM (sbmoe.lm) with equal total and active expert parameters
and an equal token budget (steps x batch x seq_len); only the candidate pool of each layer's router
changes: its own E experts (local), or the experts of r adjacent layers (ReXMoE, group pools), with PSR
unmasking the non-local candidates linearly over the first ``--psr-fraction`` of training. ReXMoE has
no public code: this is our reading of its abstract (see sbmoe/moe/rexmoe.py).

Trained on SciFact abstracts (5% of documents held out by id for validation), evaluated on the held-out
split and on WikiText-2 valid (out of domain). Writes eval/results/rexmoe.json (one record per arm and
seed), rexmoe.md (mean +- std over seeds) and rexmoe.png (validation perplexity over training).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from report import TimeBudget, command_line, machine_line, mean_std, save_png

from sbmoe.atomic import atomic_file, write_json
from sbmoe.lm.data import LMCorpus
from sbmoe.lm.model import LMConfig
from sbmoe.lm.train import LMTrainConfig, evaluate_final, train_lm

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {  # arm -> LMConfig overrides
    "local": {"pool": "local", "reuse": 1},
    "rex-r2": {"pool": "group", "reuse": 2},
    "rex-r2-psr": {"pool": "group", "reuse": 2, "psr_schedule": "linear"},
    "rex-r4": {"pool": "group", "reuse": 4},
    "rex-r4-psr": {"pool": "group", "reuse": 4, "psr_schedule": "linear"},
}


def layer_mean(record: dict, key: str) -> float:
    return statistics.mean(record["final"][key])


def markdown(records: list[dict], arms: list[str], settings: dict, args_line: str,
             held_out: str = "held-out SciFact") -> str:
    first = records[0]
    lines = ["# Layer-local MoE vs ReXMoE (tiny MoE LM)", "", f"Command: `{args_line}`", "",
             f"{first['params']['total']:,} parameters, {first['params']['expert']:,} in experts, "
             f"{first['params']['active_expert_per_token']:,} active expert parameters per token (equal across "
             f"arms up to the routers' gates); {settings['tokens_per_run']:,} training tokens per run. "
             "Mean ± std over seeds; entropy, non-local share and distinct top-k combinations are means over "
             "layers on the validation tokens at the end of training.", "",
             f"| arm | val ppl ({held_out}) | WikiText-2 valid ppl | load entropy (nats) | max/mean load "
             "| non-local share | distinct combinations | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        mine = [r for r in records if r["arm"] == arm]
        if not mine:
            continue
        lines.append(
            f"| {arm} | {mean_std([r['val_ppl'] for r in mine], 2)} | {mean_std([r['ood_ppl'] for r in mine], 2)} | "
            f"{mean_std([layer_mean(r, 'load_entropy') for r in mine], 3)} | "
            f"{mean_std([layer_mean(r, 'max_over_mean_load') for r in mine], 2)} | "
            f"{mean_std([layer_mean(r, 'non_local_share') for r in mine], 3)} | "
            f"{mean_std([layer_mean(r, 'distinct_combinations') for r in mine], 1)} | {len(mine)} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        runs = [r["history"] for r in records if r["arm"] == arm]
        if not runs:
            continue
        steps = [h["step"] for h in runs[0]]
        means = [statistics.mean(run[i]["val_ppl"] for run in runs) for i in range(len(steps))]
        ax.plot(steps, means, label=f"{arm} ({len(runs)} seeds)")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation perplexity (first eval windows)")
    ax.set_yscale("log")
    ax.set_title("Validation perplexity over training (mean over seeds)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--experts", type=int, default=8, help="experts per layer (E)")
    parser.add_argument("--expert-hidden", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--psr-fraction", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--time-budget-min", type=float, default=None,
                        help="Start no run that the last run's duration says would end past this budget.")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args_line = command_line("eval/rexmoe.py", args)

    corpus = LMCorpus.build(vocab_size=args.vocab)
    print(f"tokens: train {len(corpus.train):,}, validation {len(corpus.validation):,}, "
          + ", ".join(f"{name} {len(t):,}" for name, t in corpus.ood.items()), flush=True)
    settings = {**vars(args), "tokens_per_run": args.steps * args.batch_size * args.seq_len,
                "train_tokens": len(corpus.train), "validation_tokens": len(corpus.validation)}
    records: list[dict] = []
    budget = TimeBudget(args.time_budget_min)
    for seed in seeds:  # seed-major: a cut-short run is a set of complete comparisons
        for arm in arms:
            if not budget.start(f"{arm}/seed {seed}"):
                continue
            t0 = time.perf_counter()
            overrides = dict(ARMS[arm])
            if overrides.get("psr_schedule"):
                overrides["psr_fraction"] = args.psr_fraction
            model_config = LMConfig(vocab_size=corpus.vocab_size, seq_len=args.seq_len, n_layer=args.layers,
                                    d_model=args.d_model, experts_per_layer=args.experts,
                                    expert_hidden=args.expert_hidden, top_k=args.top_k, **overrides)
            config = LMTrainConfig(model=model_config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   eval_every=args.eval_every, eval_batches=4, seed=seed, show_progress=False)
            model, history = train_lm(config, corpus)
            train_seconds = time.perf_counter() - t0
            final = evaluate_final(model, corpus)
            records.append({"arm": arm, "seed": seed, **overrides, "params": model.parameter_counts(),
                            "val_ppl": final.pop("val_ppl"), "ood_ppl": final.pop("wikitext2-valid_ppl"),
                            "ood_test_ppl": final.pop("wikitext2-test_ppl"), "final": final,
                            "history": history, "train_seconds": round(train_seconds, 1)})
            print(f"{arm:<11} seed={seed} val ppl {records[-1]['val_ppl']:8.2f}  wikitext ppl "
                  f"{records[-1]['ood_ppl']:8.2f}  non-local {statistics.mean(final['non_local_share']):.3f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            write_json(RESULTS / "rexmoe.json", {"partial": True, "settings": settings, "records": records})
            budget.finish()

    table = markdown(records, arms, settings, args_line)
    if budget.skipped:
        table += f"\nNot run within the time budget: {', '.join(budget.skipped)}.\n"
    print("\n" + table)
    write_json(RESULTS / "rexmoe.json", {
        "partial": bool(budget.skipped), "skipped": budget.skipped, "settings": settings, "records": records,
        "total_seconds": round(budget.elapsed(), 1),
        "machine": machine_line(),
    })
    with atomic_file(RESULTS / "rexmoe.md") as handle:
        handle.write(table)
    plot(records, arms, RESULTS / "rexmoe.png")


if __name__ == "__main__":
    main()
