"""Mixed-precision quantisation of MoE experts: uniform RTN / GPTQ vs MxMoE vs the PTQ-benchmark heuristics on
the tiny MoE LM, and a quantised SB-MoE retriever on SciFact.

    python eval/quant.py --lm eval/cache/lm_converged/reference [--sbmoe-model eval/cache/quant/sbmoe-minilm] \
        [--seeds 0,1,2] [--budgets 2.25,2.5,3,4] [--time-budget-min 240]

LM part: perplexity (the LM corpus's held-out text and WikiText-2 valid) at each average-bits budget for
uniform RTN, uniform GPTQ (the largest whole width within the budget), MxMoE (integer program over GPTQ
sensitivities: linear-block granularity at r = 1, expert granularity at r = 1, linear at r = 0.5 and 0.25,
r weighing accuracy against the cost model's expected weight bytes per decoded token) and each
heuristic realised with GPTQ at two widths around the budget (2/3 bits at 2.25 and 2.5, 2/4 at 3, 3/5
at 4; shared-vs-routed is left out where the model has no shared expert), with 3
calibration seeds (each seed draws its own calibration windows; RTN needs none). If ``--lm`` holds no
checkpoint, an LM is trained there until the convergence rule holds (resumable, like ``sbmoe lm train``).
Retrieval part: nDCG@10 on SciFact of an SB-MoE retriever (head-only training on MiniLM, trained into
``--sbmoe-model`` if absent) with its encoder linears and head experts quantised to 8 and 4 bits.

Every cell (one arm, budget and seed) is appended to quant.json as it finishes; a rerun skips done cells, so
a killed or time-budgeted run resumes. Writes quant.{json,md,png} into ``--out-dir`` (default eval/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import TimeBudget, machine_line, mean_std, save_png

from sbmoe.atomic import atomic_file, write_json
from sbmoe.lm.data import HELD_OUT, LMCorpus
from sbmoe.lm.model import LMConfig
from sbmoe.lm.train import CHECKPOINT, TOKENIZER, LMTrainConfig, finished, load_trained, train_lm
from sbmoe.moe.quant import (
    HEURISTICS,
    BlockQuantizer,
    CostModel,
    GPTQConfig,
    QuantConfig,
    allocate,
    average_bits,
    calibrate_lm,
    expert_ties,
    heuristic_allocation,
    lm_target,
)

RESULTS = Path(__file__).resolve().parent / "results"
MXMOE_ARMS = {"mxmoe": ("linear", 1.0), "mxmoe-expert": ("expert", 1.0), "mxmoe-r0.5": ("linear", 0.5),
              "mxmoe-r0.25": ("linear", 0.25)}
ARMS = ("uniform-rtn", "uniform-gptq", *MXMOE_ARMS, *HEURISTICS)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", type=Path, default=Path("eval/cache/quant/lm"), help="LM folder (trained if empty)")
    parser.add_argument("--train-steps", type=int, default=4000, help="step cap when the LM is trained here")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="2.25,2.5,3,4")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--candidates", default="2,3,4,5,6,8", help="MxMoE's widths")
    parser.add_argument("--group-size", type=int, default=QuantConfig.group_size)
    parser.add_argument("--calib-tokens", type=int, default=QuantConfig.calib_tokens)
    parser.add_argument("--cost-tokens", type=int, default=CostModel.tokens,
                        help="tokens per forward pass in MxMoE's cost model (1: decoding)")
    parser.add_argument("--eval-tokens", type=int, default=131072, help="cap on each perplexity split")
    parser.add_argument("--sbmoe-model", type=Path, default=Path("eval/cache/quant/sbmoe-minilm"))
    parser.add_argument("--retrieval-bits", default="8,4")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--time-budget-min", type=float, default=None)
    return parser.parse_args()


class Cells:
    """quant.json's records, keyed by cell; ``add`` rewrites the file at once (a kill loses one cell)."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path, self.settings = path, settings
        self.records: list[dict] = json.loads(path.read_text())["records"] if path.is_file() else []
        self.done = {r["cell"] for r in self.records}

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.done.add(record["cell"])
        self.save()

    def save(self) -> None:
        write_json(self.path, {"settings": self.settings, "machine": machine_line(), "records": self.records})


OWN_RUN = ".trained-by-eval-quant"  # marks an LM this script trains (and may resume); others are only read


def ensure_lm(args: argparse.Namespace, budget: TimeBudget) -> bool:
    """Train an LM into ``--lm`` to the convergence rule unless another run put one there (that one is used
    as it is, never trained further); rerunning resumes this script's own training. False if time ran out."""
    checkpoint, marker = args.lm / CHECKPOINT, args.lm / OWN_RUN
    if checkpoint.is_file() and not marker.is_file():
        history = torch.load(checkpoint, weights_only=False).get("history") or []
        if not history or not history[-1].get("converged"):
            print(f"note: {args.lm} records no convergence; quantising it as it is")
        return True
    args.lm.mkdir(parents=True, exist_ok=True)
    marker.touch()
    left = None if budget.minutes is None else max(60.0, budget.minutes * 60 - budget.elapsed())
    config = LMTrainConfig(model=LMConfig(vocab_size=2048), steps=args.train_steps, output=args.lm, eval_every=100,
                           stop_on_convergence=True, min_steps=1000, time_limit_s=left, show_progress=False)
    corpus = LMCorpus.build(vocab_size=2048, tokenizer_path=args.lm / TOKENIZER)
    config.model.vocab_size = corpus.vocab_size
    _, history = train_lm(config, corpus)
    return finished(history, config)


def lm_part(args: argparse.Namespace, cells: Cells, budget: TimeBudget) -> None:
    model = load_trained(args.lm).model.eval()
    corpus = LMCorpus.build(tokenizer_path=args.lm / TOKENIZER, corpus=cells.settings["corpus"])
    splits = {"val": corpus.validation[:args.eval_tokens].long(),
              "wikitext2": corpus.ood["wikitext2-valid"][:args.eval_tokens].long()}
    target = lm_target(model)
    blocks, cost_model = target.blocks, CostModel(tokens=args.cost_tokens, group_size=args.group_size)
    candidates = [int(c) for c in args.candidates.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    if not any(b.kind == "shared" for b in blocks) and "shared" in arms:
        arms.remove("shared")  # the LM has no shared experts: shared-vs-routed does not apply

    def run(cell: str, bits: dict[str, int] | None, quantizer: BlockQuantizer | None, **extra) -> None:
        if cell in cells.done or not budget.start(cell):
            return
        if bits is not None:
            quantizer.apply(bits)
        ppl = {f"{name}_ppl": model.perplexity(tokens) for name, tokens in splits.items()}
        if quantizer is not None:
            quantizer.restore()
        record = {"cell": cell, "part": "lm", **extra, **ppl, "seconds": round(budget.finish(), 1)}
        if bits is not None:
            record |= {"average_bits": average_bits(blocks, bits),
                       "modelled_cost": sum(cost_model.block_cost(b, bits[b.name]) for b in blocks)}
        cells.add(record)
        print(f"{cell}: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()), flush=True)

    run("lm/float", None, None, arm="float", budget=32.0, seed=None)
    rtn = BlockQuantizer(target, "rtn", args.group_size)
    if "uniform-rtn" in arms:
        for b in budgets:
            run(f"lm/uniform-rtn/{b}", {x.name: int(b) for x in blocks}, rtn, arm="uniform-rtn", budget=b, seed=None)
    for seed in (int(s) for s in args.seeds.split(",")):
        pending = [f"lm/{a}/{b}/{seed}" for a in arms if a != "uniform-rtn" for b in budgets]
        if all(c in cells.done for c in pending):
            continue
        calibrate_lm(model, target, corpus.train, args.calib_tokens, seed)
        gptq = BlockQuantizer(target, "gptq", args.group_size, GPTQConfig())
        table = gptq.sensitivity(candidates) if any(a in MXMOE_ARMS for a in arms) else {}
        weights = gptq.originals
        for b in budgets:
            for arm in arms:
                cell = f"lm/{arm}/{b}/{seed}"
                if arm == "uniform-rtn" or cell in cells.done:
                    continue
                if arm == "uniform-gptq":
                    bits = {x.name: int(b) for x in blocks}
                elif arm in MXMOE_ARMS:
                    granularity, r = MXMOE_ARMS[arm]
                    units = expert_ties(blocks) if granularity == "expert" else blocks
                    bits = allocate(units, table, candidates, b, r, cost_model).bits
                else:
                    bits = heuristic_allocation(arm, blocks, b, **heuristic_scores(arm, weights, target, seed))
                run(cell, bits, gptq, arm=arm, budget=b, seed=seed)


def heuristic_scores(arm: str, weights: dict, target, seed: int) -> dict:
    return {"outlier": {"weights": weights}, "block-score": {"block_scores": target.block_scores},
            "random": {"seed": seed}}.get(arm, {})


def retrieval_part(args: argparse.Namespace, cells: Cells, budget: TimeBudget) -> None:
    from sbmoe.evaluation.benchmark import evaluate_systems
    from sbmoe.evaluation.systems import dense_system
    from sbmoe.models.encoder import EncoderConfig
    from sbmoe.models.quantize import quantize_model
    from sbmoe.training.config import TrainConfig
    from sbmoe.training.trainer import train

    if not (args.sbmoe_model / "modules.json").is_file():
        if not budget.start("retrieval/train"):
            return
        train(TrainConfig(model="minilm", output=args.sbmoe_model, data="scifact", moe="top1", freeze_encoder=True,
                          show_progress=False))
        budget.finish()

    def ndcg(folder: Path) -> float:
        system = dense_system(EncoderConfig(model=str(folder), backend="torch"), use_cache=False, show_progress=False)
        return evaluate_systems({"m": system}, ["scifact"], ["nDCG@10"]).value("m", "scifact", "nDCG@10")

    arms = [("float", None, None)] + [(f"{m}-{b}", m, int(b)) for b in args.retrieval_bits.split(",")
                                      for m in ("rtn", "gptq")]
    for name, method, bits in arms:
        cell = f"retrieval/{name}"
        if cell in cells.done or not budget.start(cell):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.sbmoe_model
            if method is not None:
                folder = Path(tmp) / "q"
                quantize_model(args.sbmoe_model, folder, QuantConfig(bits=bits, method=method,
                                                                    group_size=args.group_size))
            value = ndcg(folder)
        cells.add({"cell": cell, "part": "retrieval", "arm": name, "method": method, "bits": bits,
                   "ndcg@10": value, "seconds": round(budget.finish(), 1)})
        print(f"{cell}: nDCG@10 {value:.4f}", flush=True)


def lm_rows(records: list[dict]) -> dict[tuple[str, float], list[dict]]:
    rows: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        if r["part"] == "lm" and r["arm"] != "float":
            rows.setdefault((r["arm"], r["budget"]), []).append(r)
    return rows


def markdown(cells: Cells, args_line: str) -> str:
    records, settings = cells.records, cells.settings
    rows = lm_rows(records)
    budgets = sorted({b for _, b in rows})
    arms = [a for a in ARMS if any((a, b) in rows for b in budgets)]
    lines = ["# Mixed-precision quantisation of MoE experts", "", f"Command: `{args_line}`", "",
             f"Machine: {machine_line()}. LM: `{settings['lm']}`; group size {settings['group_size']}; "
             f"{settings['calib_tokens']:,} calibration tokens per seed; perplexity over at most "
             f"{settings['eval_tokens']:,} tokens per split. Mean ± std over calibration seeds (uniform RTN needs "
             "none); uniform arms take the largest whole width within the budget. The heuristics use two widths "
             "around the budget (2/3 at 2.25 and 2.5, 2/4 at 3, 3/5 at 4); "
             "shared-vs-routed has no row where the LM has no shared expert. Average bits count weight bits of "
             "the quantised blocks (attention projections and expert "
             "weights), not scales and zeros, which every arm pays alike.", ""]
    floats = [r for r in records if r.get("arm") == "float" and r["part"] == "lm"]
    held_out = HELD_OUT[settings.get("corpus", "scifact")]
    if floats:
        lines += [f"Float model: WikiText-2 valid ppl {floats[0]['wikitext2_ppl']:.2f}, {held_out} ppl "
                  f"{floats[0]['val_ppl']:.2f}.", ""]
    for metric, title in (("wikitext2_ppl", "WikiText-2 valid perplexity"), ("val_ppl", f"{held_out} perplexity")):
        lines += [f"## {title}", "", "| arm | " + " | ".join(f"{b:g} bits (avg)" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for arm in arms:
            cells_text = []
            for b in budgets:
                mine = rows.get((arm, b), [])
                cells_text.append(f"{mean_std([r[metric] for r in mine], 2)} ({mine[0]['average_bits']:.2f})"
                                  if mine else "-")
            lines.append(f"| {arm} | " + " | ".join(cells_text) + " |")
        lines.append("")
    metrics = (("wikitext2_ppl", "WikiText-2"), ("val_ppl", held_out))

    def mean_of(arm: str, budget: float, metric: str) -> float:
        return statistics.mean(r[metric] for r in rows[(arm, budget)])

    for metric, label in metrics:
        lines += [f"## Ranking at each budget ({label}, mean over seeds)", ""]
        for b in budgets:
            ranked = sorted((mean_of(a, b, metric), a) for a in arms if (a, b) in rows)
            lines.append(f"- {b:g} bits: " + " < ".join(f"{a} {v:.2f}" for v, a in ranked))
        lines.append("")
    sweep = [a for a in ("uniform-gptq", "mxmoe", "mxmoe-r0.5", "mxmoe-r0.25") if a in arms]
    if len(sweep) > 1:
        lines += ["## MxMoE accuracy/performance weight r (modelled cost relative to uniform GPTQ)", "",
                  f"| arm | budget | average bits | modelled cost | WikiText-2 ppl | {held_out} ppl |",
                  "|---|---|---|---|---|---|"]
        for b in budgets:
            base = rows.get(("uniform-gptq", b))
            for arm in sweep:
                mine = rows.get((arm, b))
                if mine and base:
                    cost = statistics.mean(r["modelled_cost"] for r in mine) / base[0]["modelled_cost"]
                    lines.append(f"| {arm} | {b:g} | {mine[0]['average_bits']:.2f} | {cost:.3f} | "
                                 f"{mean_std([r['wikitext2_ppl'] for r in mine], 2)} | "
                                 f"{mean_std([r['val_ppl'] for r in mine], 2)} |")
        lines.append("")
    lines += ["## Targets (mean over seeds, on each perplexity)", ""]
    for metric, label in metrics:
        for b in (2.25, 2.5):
            if ("mxmoe", b) in rows and ("uniform-gptq", b) in rows:
                m, g = mean_of("mxmoe", b, metric), mean_of("uniform-gptq", b, metric)
                lines.append(f"- {label}: MxMoE < uniform GPTQ at {b:g} bits: {'yes' if m < g else 'no'} "
                             f"({m:.2f} vs {g:.2f})")
            if ("mxmoe", b) in rows and ("mxmoe-expert", b) in rows:
                m, e = mean_of("mxmoe", b, metric), mean_of("mxmoe-expert", b, metric)
                lines.append(f"- {label}: linear-block <= expert-level allocation at {b:g} bits: "
                             f"{'yes' if m <= e else 'no'} ({m:.2f} vs {e:.2f})")
    retrieval = [r for r in records if r["part"] == "retrieval"]
    if retrieval:
        lines += ["", "## SB-MoE retriever on SciFact (encoder linears + head experts quantised)", "",
                  f"Model: `{settings['sbmoe_model']}`.", "", "| arm | nDCG@10 |", "|---|---|"]
        lines += [f"| {r['arm']} | {r['ndcg@10']:.4f} |" for r in retrieval]
    return "\n".join(lines) + "\n"


def plot(cells: Cells, path: Path) -> None:
    """Perplexity vs average bits, one panel per split (WikiText-2, the LM corpus's held-out text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = lm_rows(cells.records)
    held_out = HELD_OUT[cells.settings.get("corpus", "scifact")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (metric, label) in zip(axes, (("wikitext2_ppl", "WikiText-2 valid"), ("val_ppl", held_out)), strict=True):
        for arm in ARMS:
            points = sorted((b, statistics.mean(r[metric] for r in rs)) for (a, b), rs in rows.items() if a == arm)
            if points:
                style = "-o" if arm.startswith(("uniform", "mxmoe")) else "--."
                ax.plot(*zip(*points, strict=True), style, label=arm, markersize=4)
        floats = [r[metric] for r in cells.records if r["part"] == "lm" and r["arm"] == "float"]
        if floats:
            ax.axhline(floats[0], color="black", linewidth=0.8, linestyle=":", label="float")
        ax.set_xlabel("average bits per quantised weight (budget)")
        ax.set_ylabel(f"{label} perplexity")
        ax.set_yscale("log")
        ax.set_title(f"Tiny MoE LM: {label} perplexity vs average bits")
    axes[0].legend(fontsize=7, ncol=2)
    save_png(fig, path)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    args = parse_args()
    args_line = "python eval/quant.py " + " ".join(sys.argv[1:])
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cells = Cells(args.out_dir / "quant.json", settings)
    budget = TimeBudget(args.time_budget_min)
    began = time.perf_counter()
    if not ensure_lm(args, budget):
        print(f"LM training stopped at the time budget; rerun to resume ({args.lm})")
        return
    cells.settings["corpus"] = load_trained(args.lm).corpus
    lm_part(args, cells, budget)
    if not args.skip_retrieval:
        retrieval_part(args, cells, budget)
    cells.save()
    with atomic_file(args.out_dir / "quant.md") as handle:
        handle.write(markdown(cells, args_line))
    plot(cells, args.out_dir / "quant.png")
    if budget.skipped:
        print(f"skipped at the time budget ({len(budget.skipped)} cells): rerun to resume")
    print(f"done in {(time.perf_counter() - began) / 60:.1f} min -> {args.out_dir}")


if __name__ == "__main__":
    main()
