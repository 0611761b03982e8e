"""Layer-local MoE vs ReXMoE (r=2, r=4, with and without PSR) at the converged testbed's token budget.

    python eval/rexmoe_converged.py [--corpus scifact] [--steps N] [--seeds 0,1,2] [--arms ...] [--time-budget-min 60]

Every arm has equal total and active expert parameters (eval/rexmoe.py's arms) and trains for the same
number of steps: by default the step at which the reference of eval/lm_converged.py met the convergence
rule (read from eval/results/lm_converged.cells.json; run that first or pass ``--steps``), with cosine decay
over exactly those steps. One resumable cell per arm and seed (trained in chunks of at most
``--cell-limit-min`` minutes; rerun the same command to continue). Writes eval/results/
rexmoe_converged.cells.json, rexmoe_converged.json, rexmoe_converged.md (PPL mean +- std over seeds) and
rexmoe_converged.png (the validation curves); with ``--corpus tinyshakespeare`` the budget is that corpus's
reference and the files are rexmoe_converged_tinyshakespeare.*.
"""

from __future__ import annotations

import argparse
import json

from lm_cells import Cells, add_common_args, best_point, corpus_suffix, load_corpus, model_config, reference_cell
from report import command_line, machine_line, mean_std
from rexmoe import ARMS, markdown, plot

from sbmoe.atomic import atomic_file, write_json
from sbmoe.lm.data import HELD_OUT
from sbmoe.lm.train import LMTrainConfig


def budget_steps(args: argparse.Namespace) -> int:
    """``--steps``, else the converged reference's step count."""
    if args.steps:
        return args.steps
    cells, name = args.root / "results" / "lm_converged.cells.json", reference_cell(args.corpus)
    if not cells.is_file() or name not in json.loads(cells.read_text()):
        raise SystemExit(f"{cells}: no {name} cell yet; run eval/lm_converged.py --corpus {args.corpus} first "
                         "or pass --steps")
    return json.loads(cells.read_text())[name]["steps"]


def best_along_training(records: list[dict], arms: list[str]) -> str:
    """The lowest eval-window PPL each arm reached during training and its step: on a corpus the model
    overfits, the end-of-run PPL and the best PPL can rank arms differently."""
    lines = ["", "| arm | best eval-window PPL during training | at step | seeds |", "|---|---|---|---|"]
    for arm in arms:
        bests = [best_point(r["history"]) for r in records if r["arm"] == arm]
        if bests:
            lines.append(f"| {arm} | {mean_std([b['val_ppl'] for b in bests], 2)} | "
                         f"{', '.join(str(b['step']) for b in bests)} | {len(bests)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: converged step)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--psr-fraction", type=float, default=0.5)
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(set(arms) - set(ARMS))}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = budget_steps(args)
    args_line = command_line("eval/rexmoe_converged.py", args)
    corpus = load_corpus(args)
    stem = "rexmoe_converged" + corpus_suffix(args.corpus)
    cells = Cells(args, stem)
    records = []
    for seed in seeds:  # seed-major: a cut-short call leaves complete comparisons
        for arm in arms:
            overrides = dict(ARMS[arm])
            if overrides.get("psr_schedule"):
                overrides["psr_fraction"] = args.psr_fraction
            config = LMTrainConfig(model=model_config(args, corpus.vocab_size, **overrides), steps=steps,
                                   batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                                   eval_batches=args.eval_batches, seed=seed, show_progress=False,
                                   device=args.device, corpus=args.corpus)
            result = cells.train(f"{arm}-seed{seed}", config, corpus)
            if result is not None:
                records.append({"arm": arm, "seed": seed, **overrides, "params": result["params"],
                                "val_ppl": result["val_ppl"], "ood_ppl": result["wikitext2_valid_ppl"],
                                "final": result["final"], "history": result["history"], "wall_s": result["wall_s"]})
    complete = cells.report_pending()
    if not records:
        return
    settings = {**{k: str(v) for k, v in vars(args).items()}, "steps": steps,
                "tokens_per_run": steps * args.batch_size * args.seq_len}
    table = markdown(records, arms, settings, args_line, HELD_OUT[args.corpus]).replace(
        "# Layer-local MoE vs ReXMoE (tiny MoE LM)", "# Layer-local MoE vs ReXMoE at the converged testbed's budget")
    table += best_along_training(records, arms)
    if not complete:
        table += f"\nNot finished yet: {', '.join(cells.pending)}.\n"
    results = args.root / "results"
    write_json(results / f"{stem}.json", {"partial": not complete, "settings": settings, "records": records,
                                          "machine": machine_line()})
    with atomic_file(results / f"{stem}.md") as handle:
        handle.write(table)
    plot(records, arms, results / f"{stem}.png")
    print(table)


if __name__ == "__main__":
    main()
