"""Pre-gated MoE on the converged testbed: quality (PPL, next-block top-k recall) and an expert offload
runtime's latency and memory in four modes.

    python eval/pregate.py [--seeds 0] [--finetune-steps 1000] [--copy-ratios 0.25,0.5,1,2,4] [--time-budget-min 60]

Needs the converged reference of eval/lm_converged.py (its checkpoint in eval/cache/lm_converged/reference).
Cells, in this order (each resumable, skipped once its result exists):
  finetune         the reference converted to pre-gated (block l+1's gate reads block l's MoE input,
                   initialised from block l+1's gate) and fine-tuned for ``--finetune-steps``;
  finetune-control the reference fine-tuned alike without pre-gates (it is not converged, so the extra
                   steps alone lower PPL: the pre-gated model is compared with this too);
  quality          PPL of baseline, converted-before-fine-tuning and fine-tuned models, and each pre-gate's
                   top-k recall against the reference's own gate of the next block;
  offload          batch-1 decoding of the fine-tuned model on the offload runtime (sbmoe.moe.offload) in
                   all-resident, on-demand, prefetch-all and pre-gated modes, at the real copy speed and at
                   simulated bandwidths where copying one block's active experts takes ``ratio`` x one
                   block's all-resident compute time. Capacities: on-demand and pre-gated 2k experts
                   (twice the active ones), prefetch-all E + k, all-resident every expert;
  scratch-seed<s>  a pre-gated model trained from scratch with the reference's recipe (convergence rule); its
                   PPL joins the quality table when the report is written.
Writes eval/results/pregate.cells.json, pregate.json, pregate.md, pregate.png (latency vs copy/compute
ratio) and pregate_timeline.png (copy, compute and stall intervals of a few tokens at ratio 1). With
``--device cuda`` the training cells run on the GPU, the offload cell is ``offload-cuda`` (experts in pinned
host memory, copies on a CUDA stream) and the report files are pregate_cuda.*; the other cells are shared.
``--corpus tinyshakespeare`` starts from that corpus's reference (the one that meets the convergence rule;
pass the reference's --min-steps and --eval-every so the from-scratch run follows its recipe) and writes
pregate_tinyshakespeare.*; ``--skip-offload`` leaves out the offload cell (quality only).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from lm_cells import (
    Cells,
    add_common_args,
    corpus_suffix,
    figure,
    finish_plot,
    load_corpus,
    reference_config,
    reference_run,
)
from report import command_line, machine_line, save_png

from sbmoe.atomic import atomic_file, write_json
from sbmoe.lm.offload_decode import OffloadedDecoder
from sbmoe.lm.pregated import pregate_recall, reference_gates, to_pregated
from sbmoe.lm.train import LMTrainConfig, evaluate_final, load_trained
from sbmoe.moe.offload import OFFLOAD_MODES, OffloadConfig

TIMELINE_TOKENS = 3


def quality(args: argparse.Namespace, cells: Cells, corpus) -> dict:
    base = load_trained(reference_run(args)).model
    tuned = load_trained(cells.cache / "finetune").model
    gates, tokens = reference_gates(base), corpus.validation
    baseline, zero_shot, final = evaluate_final(base, corpus), to_pregated(base), evaluate_final(tuned, corpus)
    rows = {"baseline": {"val_ppl": baseline["val_ppl"], "wikitext2_valid_ppl": baseline["wikitext2-valid_ppl"]},
            "converted, not fine-tuned": {"val_ppl": zero_shot.perplexity(tokens.long()),
                                          "recall": pregate_recall(zero_shot, gates, tokens)},
            "converted + fine-tuned": {"val_ppl": final["val_ppl"], "wikitext2_valid_ppl": final["wikitext2-valid_ppl"],
                                       "recall": pregate_recall(tuned, gates, tokens)}}
    return rows


def quality_table(rows: dict, runs: dict[str, dict]) -> dict:
    """The quality cell's rows plus one row per named training run (cells that may finish after it), each
    with its PPL relative to the baseline."""
    rows = {name: dict(row) for name, row in rows.items()}
    for name, result in runs.items():
        rows[name] = {"val_ppl": result["val_ppl"], "wikitext2_valid_ppl": result["wikitext2_valid_ppl"],
                      "steps": result["steps"]}
    for row in rows.values():
        row["ppl_vs_baseline"] = row["val_ppl"] / rows["baseline"]["val_ppl"] - 1
    return rows


def decode(model, mode: str, capacity: int | None, bandwidth: float | None, tokens: torch.Tensor,
           reference: torch.Tensor | None) -> tuple[dict, OffloadedDecoder, torch.Tensor]:
    config = OffloadConfig(mode=mode, capacity=capacity, bandwidth=bandwidth, device=str(tokens.device))
    decoder = OffloadedDecoder(model, config)
    try:
        logits = torch.cat([decoder.run(row.unsqueeze(0)) for row in tokens])
    finally:
        decoder.close()
    summary = decoder.summary()
    summary["exact_vs_all_resident"] = None if reference is None else bool(torch.equal(logits, reference))
    return summary, decoder, logits


def timeline(decoder: OffloadedDecoder) -> dict:
    """The intervals of a few tokens in the middle of the first sequence."""
    first = len(decoder.token_spans) // 4
    start, end = decoder.token_spans[first][0], decoder.token_spans[first + TIMELINE_TOKENS - 1][1]
    return {"start": start, "end": end, "tokens": decoder.token_spans[first:first + TIMELINE_TOKENS],
            "intervals": [vars(i) for i in decoder.runtime.timeline if i.end >= start and i.start <= end]}


def device_suffix(device: str, name: str, separator: str) -> str:
    """``name`` for the CPU runs, ``name<separator><device type>`` (e.g. offload-cuda) for the others."""
    kind = device.split(":")[0]
    return name if kind == "cpu" else f"{name}{separator}{kind}"


def offload(args: argparse.Namespace, cells: Cells, corpus) -> dict:
    torch.set_num_threads(1)  # one compute thread; the copy worker is the other
    model = load_trained(cells.cache / "finetune").model
    model.to(args.device)
    length = min(args.decode_len, model.config.seq_len)
    tokens = corpus.validation[: args.decode_seqs * length].long().view(args.decode_seqs, length).to(args.device)
    k, experts = model.config.top_k, model.config.experts_per_layer
    capacity = {"all-resident": None, "on-demand": 2 * k, "prefetch-all": experts + k, "pre-gated": 2 * k}
    decode(model, "all-resident", None, None, tokens[:1], None)  # warm-up
    resident, _, reference = decode(model, "all-resident", None, None, tokens, None)
    block_s = statistics.mean(resident["block_ms"].values()) / 1e3
    runs, timelines = [], {}
    for ratio in [None, *(float(r) for r in args.copy_ratios.split(","))]:
        bandwidth = None if ratio is None else k * resident["expert_bytes"] / (ratio * block_s)
        for mode in OFFLOAD_MODES:  # all-resident again at each ratio: a baseline measured beside the others
            summary, decoder, _ = decode(model, mode, capacity[mode], bandwidth, tokens, reference)
            runs.append({**summary, "ratio": ratio})
            if ratio == 1.0:
                timelines[mode] = timeline(decoder)
            print(f"ratio {ratio}: {mode:<13} {summary['token_ms_mean']:.2f} ms/token, misses "
                  f"{summary['misses']}, exact {summary['exact_vs_all_resident']}", flush=True)
    return {"device": args.device, "block_compute_ms": 1e3 * block_s, "capacity": capacity,
            "decode_tokens": int(tokens.numel()), "runs": runs, "timelines": timelines}


def markdown(result: dict, args_line: str) -> str:
    lines = ["# Pre-gated MoE: quality and expert offloading", "", f"Command: `{args_line}`", "", "## Quality", "",
             "Recall: per block l >= 1, the share of the reference gate's top-k experts (the converged baseline's "
             "own gate on block l's input) that the pre-gate (reading block l-1's input) chose.", "",
             "| model | val PPL | vs baseline | WikiText-2 valid PPL | top-k recall per block |",
             "|---|---|---|---|---|"]
    for name, row in result["quality"].items():
        recall = " ".join(f"{r:.3f}" for r in row.get("recall", [])) or "-"
        wiki = f"{row['wikitext2_valid_ppl']:.2f}" if "wikitext2_valid_ppl" in row else "-"
        lines.append(f"| {name} | {row['val_ppl']:.2f} | {100 * row['ppl_vs_baseline']:+.1f}% | {wiki} | {recall} |")
    off = result.get("offload")
    if off is None:  # --skip-offload
        return "\n".join(lines) + "\n"
    capacities = ", ".join(f"{mode} {c or 'all'}" for mode, c in off["capacity"].items())
    lines += ["", "## Offload runtime (batch-1 decoding, fine-tuned pre-gated model)", "",
              f"All-resident compute per block: {off['block_compute_ms']:.3f} ms; {off['decode_tokens']} tokens per "
              "run. Ratio = simulated copy time of one block's active experts / one block's compute time (- : the "
              "real copy speed); each ratio's all-resident row is the baseline measured beside it. Capacities "
              f"(experts): {capacities}.", "",
              "| ratio | mode | ms/token | vs all-resident | stall ms/token | misses/token | peak resident expert "
              "bytes | copied bytes/token | exact |", "|---|---|---|---|---|---|---|---|---|"]
    for run in off["runs"]:
        n = run["tokens"]
        base = next(r["token_ms_mean"] for r in off["runs"]
                    if r["mode"] == "all-resident" and r["ratio"] == run["ratio"])
        lines.append(f"| {run['ratio'] if run['ratio'] is not None else '-'} | {run['mode']} | "
                     f"{run['token_ms_mean']:.3f} | {100 * (run['token_ms_mean'] / base - 1):+.1f}% | "
                     f"{run['stall_ms'] / n:.3f} | {run['misses'] / n:.2f} | {run['peak_resident_bytes']:,} | "
                     f"{run['bytes_copied'] / n:,.0f} | {run['exact_vs_all_resident']} |")
    return "\n".join(lines) + "\n"


def plot_latency(off: dict, path: Path) -> None:
    fig, (ax,) = figure()
    for mode in OFFLOAD_MODES:
        points = sorted((r["ratio"], r["token_ms_mean"]) for r in off["runs"] if r["mode"] == mode and r["ratio"])
        ax.plot(*zip(*points, strict=True), marker="o", label=mode)
    finish_plot(fig, ax, path, "copy time of a block's active experts / block compute time (simulated bandwidth)",
                "ms per token (batch 1)", "Expert offloading: decoding latency", log="x")


def plot_timeline(off: dict, path: Path) -> None:
    modes = list(off["timelines"])
    fig, axes = figure(len(modes), (9, 1.6 * len(modes) + 0.6))
    colours = {"compute": "tab:blue", "copy": "tab:orange", "stall": "tab:red"}
    for ax, mode in zip(axes, modes, strict=True):
        line = off["timelines"][mode]
        for row, lane in enumerate(("compute", "copy", "stall")):
            bars = [(1e3 * (i["start"] - line["start"]), 1e3 * (i["end"] - i["start"]))
                    for i in line["intervals"] if i["lane"] == lane]
            ax.broken_barh(bars, (row - 0.4, 0.8), color=colours[lane])
        for start, _ in line["tokens"]:
            ax.axvline(1e3 * (start - line["start"]), color="grey", linewidth=0.5)
        ax.set_yticks(range(3), ["compute", "copy", "stall"])
        ax.set_title(f"{mode} (ratio 1, {TIMELINE_TOKENS} tokens)", fontsize=9)
    axes[-1].set_xlabel("ms")
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--seeds", default="0", help="seeds of the from-scratch pre-gated runs (\"\": none)")
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--copy-ratios", default="0.25,0.5,1,2,4")
    parser.add_argument("--decode-seqs", type=int, default=8)
    parser.add_argument("--decode-len", type=int, default=128)
    parser.add_argument("--skip-offload", action="store_true",
                        help="quality cells only (the offload timings want a quiet machine; they do not depend on "
                        "the corpus)")
    args = parser.parse_args()
    args_line = command_line("eval/pregate.py", args)
    reference = reference_run(args)
    if not (reference / "checkpoint.pt").is_file():
        raise SystemExit(f"{reference}: no converged reference; run eval/lm_converged.py first")
    corpus = load_corpus(args)
    cells = Cells(args, "pregate" + corpus_suffix(args.corpus))
    # cheapest first: conversion + fine-tuning, its quality and the offload runtime, then from-scratch runs
    def tune(pregate: bool) -> LMTrainConfig:
        config = reference_config(args, corpus.vocab_size, pregate=pregate)
        return replace(config, steps=args.finetune_steps, lr=args.finetune_lr, stop_on_convergence=False,
                       init_from=reference, warmup=min(config.warmup, args.finetune_steps // 10))

    tuned = cells.train("finetune", tune(pregate=True), corpus)
    # control: the baseline fine-tuned alike (the reference is not converged, so extra steps alone help)
    control = cells.train("finetune-control", tune(pregate=False), corpus)
    result = {}
    if tuned is not None:
        result = {"quality": cells.run("quality", lambda _s: quality(args, cells, corpus))}
        if not args.skip_offload:
            result["offload"] = cells.run(device_suffix(args.device, "offload", "-"),
                                          lambda _s: offload(args, cells, corpus))
    scratch = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        run = cells.train(f"scratch-seed{seed}", reference_config(args, corpus.vocab_size, seed, pregate=True),
                          corpus)
        if run is not None:
            scratch.append({**run, "seed": seed})
    if not cells.report_pending():
        return
    runs = {"baseline + the same fine-tuning (control)": control,
            **{f"from scratch (seed {run['seed']})": run for run in scratch}}
    result["quality"] = quality_table(result["quality"], runs)
    results = args.root / "results"
    stem = device_suffix(args.device, "pregate", "_") + corpus_suffix(args.corpus)
    write_json(results / f"{stem}.json", {"settings": {k: str(v) for k, v in vars(args).items()}, **result,
                                          "finetune": tuned, "finetune_control": control, "scratch": scratch,
                                          "machine": machine_line()})
    with atomic_file(results / f"{stem}.md") as handle:
        handle.write(markdown(result, args_line))
    if "offload" in result:
        plot_latency(result["offload"], results / f"{stem}.png")
        plot_timeline(result["offload"], results / f"{stem}_timeline.png")
    print(markdown(result, args_line))


if __name__ == "__main__":
    main()
