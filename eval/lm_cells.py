"""Resumable cells for the LM experiments (lm_converged.py, rexmoe_converged.py, pregate.py).

A cell is one named unit of work whose result lands in ``<results>/<experiment>.cells.json``; a cell whose
result exists is skipped. Training cells run in chunks: each call trains for at most the cell's time limit
(the trainer stops after the first checkpoint past it) and the cell's result is written only once the run
is finished, so rerunning the same command continues where it stopped. A whole invocation has a time
budget: cells that would start past it are left for the next invocation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sbmoe.atomic import write_json
from sbmoe.lm.data import CORPORA, LMCorpus
from sbmoe.lm.model import LMConfig
from sbmoe.lm.train import TOKENIZER, LMTrainConfig, evaluate_final, finished, train_lm

EVAL = Path(__file__).resolve().parent


def reference_cell(corpus: str) -> str:
    """The converged reference's cell name for ``corpus`` (SciFact's, the default, is plain ``reference``)."""
    return "reference" if corpus == "scifact" else f"reference-{corpus}"


def reference_run(args: argparse.Namespace) -> Path:
    """The converged reference's run folder (checkpoint and the corpus's shared tokenizer) for ``--corpus``."""
    return args.root / "cache" / "lm_converged" / reference_cell(args.corpus)


def corpus_suffix(corpus: str) -> str:
    """Appended to an experiment's file names for a corpus other than SciFact."""
    return "" if corpus == "scifact" else f"_{corpus}"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The testbed's model and training options (eval/rexmoe.py's settings; --experts is E per layer) and
    the cell controls."""
    parser.add_argument("--root", type=Path, default=EVAL,
                        help="results go to ROOT/results, checkpoints to ROOT/cache (a temp folder for smoke runs)")
    parser.add_argument("--time-budget-min", type=float, default=None, help="start no cell past this budget")
    parser.add_argument("--cell-limit-min", type=float, default=40.0, help="train at most this long per call")
    for flag, default in (("batch-size", 16), ("seq-len", 128), ("vocab", 2048), ("layers", 4), ("d-model", 128),
                          ("experts", 8), ("expert-hidden", 128), ("top-k", 2), ("lr", 3e-3), ("eval-every", 250),
                          ("eval-batches", 16)):
        parser.add_argument(f"--{flag}", type=type(default), default=default)
    parser.add_argument("--max-steps", type=int, default=12000, help="the converged run's step cap (cosine horizon)")
    parser.add_argument("--device", default="cpu", help="where models train and run (cuda on a GPU)")
    parser.add_argument("--min-steps", type=int, default=2000, help="the convergence rule applies from this step")
    parser.add_argument("--corpus", default="scifact", choices=list(CORPORA),
                        help="training text; each corpus has its own reference run and tokenizer")


def figure(rows: int = 1, size: tuple[float, float] = (7, 4)):
    """A matplotlib figure (Agg backend) and its column of axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=size, squeeze=False)
    return fig, list(axes[:, 0])


def finish_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, log: str = "") -> None:
    """Label one-axes plots alike (``log``: the axes, "x" and/or "y", on a log scale), write the PNG."""
    from report import save_png

    for axis in log:
        getattr(ax, f"set_{axis}scale")("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    save_png(fig, path)


def best_point(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation with the lowest validation PPL in a training history."""
    return min(history, key=lambda h: h["val_ppl"])


def model_config(args: argparse.Namespace, vocab_size: int, **overrides: Any) -> LMConfig:
    return LMConfig(vocab_size=vocab_size, seq_len=args.seq_len, n_layer=args.layers, d_model=args.d_model,
                    experts_per_layer=args.experts, expert_hidden=args.expert_hidden, top_k=args.top_k, **overrides)


def reference_config(args: argparse.Namespace, vocab_size: int, seed: int = 0, **overrides: Any) -> LMTrainConfig:
    """The converged testbed's recipe: cosine over ``max_steps``, stopped by the convergence rule."""
    return LMTrainConfig(model=model_config(args, vocab_size, **overrides), steps=args.max_steps,
                         batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                         eval_batches=args.eval_batches, seed=seed, show_progress=False, stop_on_convergence=True,
                         min_steps=args.min_steps, device=args.device, corpus=args.corpus)


def load_corpus(args: argparse.Namespace) -> LMCorpus:
    """``--corpus``'s streams with the tokenizer kept beside its reference run (every experiment on that corpus
    shares it)."""
    corpus = LMCorpus.build(vocab_size=args.vocab, tokenizer_path=reference_run(args) / TOKENIZER, corpus=args.corpus)
    print(f"tokens: train {len(corpus.train):,}, validation {len(corpus.validation):,}", flush=True)
    return corpus


class Cells:
    """Named results of one experiment, skipped when present, under a time budget."""

    def __init__(self, args: argparse.Namespace, experiment: str) -> None:
        self.path = args.root / "results" / f"{experiment}.cells.json"
        self.cache = args.root / "cache" / experiment
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.budget_s = None if args.time_budget_min is None else 60 * args.time_budget_min
        self.cell_limit_s = 60 * args.cell_limit_min
        self.started = time.perf_counter()
        self.pending: list[str] = []

    def remaining_s(self) -> float:
        left = self.cell_limit_s
        if self.budget_s is not None:
            left = min(left, self.budget_s - (time.perf_counter() - self.started))
        return left

    def run(self, name: str, work: Callable[[float], dict | None]) -> dict | None:
        """The cell's result: stored, or computed by ``work(seconds allowed)`` (None: not finished yet)."""
        if name in self.results:
            print(f"{name}: done (skipped)", flush=True)
            return self.results[name]
        if self.remaining_s() <= 0:
            print(f"{name}: left for the next call (time budget)", flush=True)
            self.pending.append(name)
            return None
        t0 = time.perf_counter()
        result = work(self.remaining_s())
        if result is None:
            print(f"{name}: chunk ended after {time.perf_counter() - t0:.0f} s; rerun to continue", flush=True)
            self.pending.append(name)
            return None
        self.results[name] = result
        write_json(self.path, self.results)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        return result

    def train(self, name: str, config: LMTrainConfig, corpus: LMCorpus) -> dict | None:
        """A training cell: run (or resume) ``config`` in ``cache/<name>`` for at most the cell's time;
        when finished, its history, final perplexities and parameter counts."""
        def work(seconds: float) -> dict | None:
            run = replace(config, output=self.cache / name, time_limit_s=seconds)
            model, history = train_lm(run, corpus)
            if not finished(history, run):
                return None
            final = evaluate_final(model, corpus)
            return {"steps": history[-1]["step"], "tokens_seen": history[-1]["step"] * config.batch_size *
                    config.model.seq_len, "converged": bool(history[-1].get("converged")),
                    "wall_s": history[-1]["wall_s"], "val_ppl": final["val_ppl"],
                    "wikitext2_valid_ppl": final.get("wikitext2-valid_ppl"), "final": final,
                    "params": model.parameter_counts(), "history": history, "run": str(self.cache / name)}
        return self.run(name, work)

    def report_pending(self) -> bool:
        """Print what is left; True when every cell is done."""
        if self.pending:
            print(f"not finished: {', '.join(self.pending)} (rerun the same command)", flush=True)
        return not self.pending
