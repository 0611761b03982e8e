"""The converged MoE LM testbed: the reference layer-local MoE LM trained until validation perplexity
improves by less than 1% over the last 20% of steps (``sbmoe.lm.train.converged``).

    python eval/lm_converged.py [--corpus scifact] [--max-steps 12000] [--time-budget-min 60] [--cell-limit-min 40]

Same model and data as eval/rexmoe.py (4 layers, d 128, 8 SwiGLU experts per layer, top-2; SciFact abstracts
with 5% of documents held out by id), AdamW with cosine decay over ``--max-steps`` and the convergence
rule checked at every evaluation from ``--min-steps`` on. Resumable: the run trains in chunks of at most
``--cell-limit-min`` minutes (rerun the same command to continue); its checkpoint, in
eval/cache/lm_converged/reference/ (with the tokenizer every LM experiment shares), is the model that
eval/pregate.py converts. ``--corpus tinyshakespeare`` trains the same model on Tiny Shakespeare (speeches,
the last 10% of the text held out) in its own folder, reference-tinyshakespeare/: a corpus small enough that
the model stops improving within a CPU budget. Writes eval/results/lm_converged.cells.json (one cell per
corpus), lm_converged.json, lm_converged.md (tokens seen, steps, wall time, perplexities; a row per finished
corpus) and lm_converged.png (the PPL curves).
"""

from __future__ import annotations

import argparse

from lm_cells import (
    Cells,
    add_common_args,
    best_point,
    figure,
    finish_plot,
    load_corpus,
    reference_cell,
    reference_config,
)
from report import command_line, machine_line

from sbmoe.atomic import atomic_file, write_json
from sbmoe.lm.data import CORPORA, HELD_OUT


def references(cells: Cells) -> dict[str, dict]:
    """Every finished reference run, by corpus."""
    return {corpus: cells.results[reference_cell(corpus)] for corpus in CORPORA
            if reference_cell(corpus) in cells.results}


def plot(runs: dict[str, dict], path) -> None:
    fig, (ax,) = figure()
    for corpus, result in runs.items():
        history = result["history"]
        line, = ax.plot([h["step"] for h in history], [h["val_ppl"] for h in history],
                        label=f"{corpus} validation (first eval windows)")
        last = history[-1]["step"]
        ax.axvspan(0.8 * last, last, alpha=0.12, color=line.get_color(), label=f"{corpus}: last 20% of steps")
    finish_plot(fig, ax, path, "training step", "perplexity", "Reference MoE LM trained to convergence", log="y")


def markdown(runs: dict[str, dict], args_line: str) -> str:
    p = next(iter(runs.values()))["params"]
    lines = ["# Converged MoE LM testbed", "", f"Last command: `{args_line}`", "",
             f"{p['expert']:,} parameters in experts, {p['active_expert_per_token']:,} active expert parameters "
             "per token (the tokenizer is trained per corpus). Stopping rule: validation PPL improved by < 1% over "
             "the last 20% of steps.", "",
             "| corpus (scored on) | parameters | converged | steps | tokens seen | wall time (min) | "
             "best eval PPL (step) | held-out PPL at stop | WikiText-2 valid PPL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for corpus, result in runs.items():
        best = best_point(result["history"])
        lines.append(f"| {HELD_OUT[corpus]} | {result['params']['total']:,} | "
                     f"{'yes' if result['converged'] else 'no (step cap)'} | "
                     f"{result['steps']:,} | {result['tokens_seen']:,} | {result['wall_s'] / 60:.1f} | "
                     f"{best['val_ppl']:.2f} ({best['step']:,}) | {result['val_ppl']:.2f} | "
                     f"{result['wikitext2_valid_ppl']:.2f} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args_line = command_line("eval/lm_converged.py", args)
    corpus = load_corpus(args)
    cells = Cells(args, "lm_converged")
    result = cells.train(reference_cell(args.corpus), reference_config(args, corpus.vocab_size, seed=args.seed),
                         corpus)
    if not cells.report_pending() or result is None:
        return
    runs = references(cells)
    results = args.root / "results"
    write_json(results / "lm_converged.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                               **{reference_cell(c): r for c, r in runs.items()},
                                               "machine": machine_line()})
    with atomic_file(results / "lm_converged.md") as handle:
        handle.write(markdown(runs, args_line))
    plot(runs, results / "lm_converged.png")
    print(markdown(runs, args_line))


if __name__ == "__main__":
    main()
