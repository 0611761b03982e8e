"""The converged MoE LM testbed: the reference layer-local MoE LM trained until validation perplexity
improves by less than 1% over the last 20% of steps (``sbmoe.lm.train.converged``).

    python eval/lm_converged.py [--max-steps 12000] [--time-budget-min 60] [--cell-limit-min 40]

Same model and data as eval/rexmoe.py (4 layers, d 128, 8 SwiGLU experts per layer, top-2; SciFact abstracts
with 5% of documents held out by id), AdamW with cosine decay over ``--max-steps`` and the convergence
rule checked at every evaluation from ``--min-steps`` on. Resumable: the run trains in chunks of at most
``--cell-limit-min`` minutes (rerun the same command to continue); its checkpoint, in
eval/cache/lm_converged/reference/ (with the tokenizer every LM experiment shares), is the model that
eval/pregate.py converts. Writes eval/results/lm_converged.cells.json (the cell), lm_converged.json,
lm_converged.md (tokens seen, steps, wall time, perplexities) and lm_converged.png (the PPL curve).
"""

from __future__ import annotations

import argparse

from lm_cells import Cells, add_common_args, figure, finish_plot, load_corpus, reference_config
from report import machine_line

from sbmoe.atomic import atomic_file, write_json


def plot(result: dict, path) -> None:
    history = result["history"]
    fig, (ax,) = figure()
    ax.plot([h["step"] for h in history], [h["val_ppl"] for h in history], label="validation (first eval windows)")
    last = history[-1]["step"]
    ax.axvspan(0.8 * last, last, alpha=0.15, label="last 20% of steps (convergence window)")
    finish_plot(fig, ax, path, "training step", "perplexity", "Reference MoE LM trained to convergence", log="y")


def markdown(result: dict, args_line: str) -> str:
    p = result["params"]
    return "\n".join([
        "# Converged MoE LM testbed", "", f"Command: `{args_line}`", "",
        f"{p['total']:,} parameters ({p['expert']:,} in experts, {p['active_expert_per_token']:,} active expert "
        "parameters per token). Stopping rule: validation PPL improved by < 1% over the last 20% of steps.", "",
        "| converged | steps | tokens seen | wall time (min) | val PPL (SciFact held-out) | WikiText-2 valid PPL |",
        "|---|---|---|---|---|---|",
        f"| {'yes' if result['converged'] else 'no (step cap)'} | {result['steps']:,} | {result['tokens_seen']:,} | "
        f"{result['wall_s'] / 60:.1f} | {result['val_ppl']:.2f} | {result['wikitext2_valid_ppl']:.2f} |", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args_line = "python eval/lm_converged.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                         for k, v in vars(args).items() if v is not None)
    corpus = load_corpus(args)
    cells = Cells(args, "lm_converged")
    result = cells.train("reference", reference_config(args, corpus.vocab_size, seed=args.seed), corpus)
    if not cells.report_pending() or result is None:
        return
    results = args.root / "results"
    write_json(results / "lm_converged.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                               "reference": result, "machine": machine_line()})
    with atomic_file(results / "lm_converged.md") as handle:
        handle.write(markdown(result, args_line))
    plot(result, results / "lm_converged.png")
    print(markdown(result, args_line))


if __name__ == "__main__":
    main()
