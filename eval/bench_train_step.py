"""Cost of one SB-MoE training step: the plain padded batch vs length-sorted micro-batches.

    python eval/bench_train_step.py [--encoders minilm-l3,minilm-l2,minilm] [--lengths 512,256] [--steps 2]

A step = forward, backward and AdamW update of encoder + SB-MoE head (paper gate, E = 6) on 64 SQuAD
training triples (question, its paragraph, a random other paragraph: 192 texts), as ``sbmoe train`` runs it.
``plain``: sentence-transformers' step, each column padded to its longest text. ``micro``: the
``CachedRankingLoss`` step (``--micro-batch-tokens``, default 8192); ``micro-bf16``: the same with the encoder
under bfloat16 autocast (``--precision bf16``), and ``micro-bf16-sdpa`` that step with the model's own SDPA
attention instead of the eager attention it switches to on CPU. Each (encoder, length, step kind) runs in
its own process so that its peak RSS is its own; the first step is a warm-up and is not timed, and one more
step runs under torch.profiler (the share of CPU time per op, untimed). One extra
check: on the first batch, the micro-batched step's loss and gradients against the plain step's (the tests
check exact equality on a tiny model; this shows it on the real one), and the bf16 step's against the fp32
plain step's (the cosine of each gradient tensor with the fp32 one). Writes eval/results/bench_train_step.json
and .md. The time is machine time: run it with nothing else running, and say so beside the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def squad_batches(batch_size: int, steps: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """``steps`` batches of SQuAD training triples, each negative a random paragraph that is not the positive."""
    from sbmoe.data import BeirDataset

    dataset = BeirDataset.open("squad")
    queries, qrels = dataset.load_split("train")
    corpus = {doc.doc_id: doc.as_text() for doc in dataset.iter_corpus()}
    doc_ids = sorted(corpus)
    rng = random.Random(seed)
    qids = rng.sample(sorted(queries), batch_size * steps)
    batches = []
    for start in range(0, len(qids), batch_size):
        rows = {"anchor": [], "positive": [], "negative": []}
        for qid in qids[start:start + batch_size]:
            positive = next(iter(qrels[qid]))
            negative = rng.choice([d for d in rng.sample(doc_ids, 2) if d != positive])
            rows["anchor"].append(queries[qid])
            rows["positive"].append(corpus[positive])
            rows["negative"].append(corpus[negative])
        batches.append(rows)
    return batches


def trainee(encoder: str, max_length: int):
    """Encoder + paper-gate head, in training mode, as ``sbmoe train --recipe paper`` builds it."""
    import torch

    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.pipeline import set_normalize, with_head
    from sbmoe.training.config import TrainConfig
    from sbmoe.training.trainer import make_heads

    torch.manual_seed(0)
    base = load_encoder(EncoderConfig(model=encoder, max_length=max_length, backend="torch"))
    set_normalize(base, False)
    config = TrainConfig.from_recipe("paper", model=encoder)
    model = with_head(base, make_heads(config, base.get_embedding_dimension()))
    model.train()
    return model, config


def features(model, rows: dict[str, list[str]]) -> list[dict]:
    """Each column tokenized and padded to its longest text, as the trainer's collator does."""
    return [dict(model.preprocess(rows[column])) for column in ("anchor", "positive", "negative")]


def one_kind(encoder: str, max_length: int, kind: str, steps: int, micro_tokens: int) -> dict:
    """Time ``steps`` steps (after a warm-up) of one step kind in this process; its peak RSS."""
    import torch

    from sbmoe.training.cached_loss import CachedRankingLoss
    from sbmoe.training.losses import ranking_loss

    model, config = trainee(encoder, max_length)
    if kind == "micro-bf16-sdpa":  # the bf16 step without its switch to eager attention on CPU
        from sbmoe.training import cached_loss

        cached_loss.bf16_autocast = lambda modules, device_type: torch.autocast(device_type, dtype=torch.bfloat16)
    if kind.startswith("micro"):
        loss_fn = CachedRankingLoss(model, 1.0, micro_tokens, "bf16" if kind.startswith("micro-bf16") else "fp32")
    else:
        loss_fn = ranking_loss(model, 1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = squad_batches(64, steps + 2)

    def one_step(feats: list[dict]) -> None:
        optimizer.zero_grad()
        loss_fn(feats, None).backward()
        optimizer.step()

    times, tokens = [], []
    for index, rows in enumerate(batches[:-1]):
        feats = features(model, rows)
        started = time.perf_counter()
        one_step(feats)
        if index:
            times.append(time.perf_counter() - started)
        tokens.append((sum(int(f["attention_mask"].sum()) for f in feats), sum(f["input_ids"].numel() for f in feats)))
    feats = features(model, batches[-1])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        one_step(feats)  # an extra, untimed step: where its CPU time goes
    ops = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {"encoder": encoder, "max_length": max_length, "kind": kind, "steps": steps,
            "seconds_per_step": round(sum(times) / len(times), 2), "step_seconds": [round(t, 2) for t in times],
            "real_tokens_per_batch": round(sum(t[0] for t in tokens) / len(tokens)),
            "padded_tokens_per_batch": round(sum(t[1] for t in tokens) / len(tokens)),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "threads": torch.get_num_threads(),
            "profile_top_ops": [[e.key, round(e.self_cpu_time_total / total, 3)] for e in ops[:4]]}


def gradient_check(encoder: str, max_length: int, micro_tokens: int) -> dict:
    """Loss and gradients of the micro-batched step against the plain step on one real batch (eval-mode
    dropout, so both steps compute the same function)."""
    import torch

    from sbmoe.training.cached_loss import CachedRankingLoss
    from sbmoe.training.losses import ranking_loss

    model, _ = trainee(encoder, max_length)
    for module in model.modules():  # dropout off, the head still in training (noisy) mode
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    feats = features(model, squad_batches(64, 1)[0])
    out = {}
    for name, loss_fn in (("plain", ranking_loss(model, 1.0)), ("micro", CachedRankingLoss(model, 1.0, micro_tokens)),
                          ("bf16", CachedRankingLoss(model, 1.0, micro_tokens, "bf16"))):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = loss_fn([dict(f) for f in feats], None)
        loss.backward()
        out[name] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    diffs = [float((out["micro"][1][n] - g).abs().max()) for n, g in out["plain"][1].items()]
    scale = max(float(g.abs().max()) for g in out["plain"][1].values())
    # tensors whose exact gradient is zero (attention key biases: softmax ignores them; the paper gate's
    # router: no gradient) hold only rounding noise, in fp32 and bf16 alike: their cosine means nothing
    norms = {n: float(g.norm()) for n, g in out["plain"][1].items()}
    kept = [n for n, norm in norms.items() if norm > 1e-4 * max(norms.values())]
    cosines = [float(torch.nn.functional.cosine_similarity(out["bf16"][1][n].flatten(), out["plain"][1][n].flatten(),
                                                           dim=0)) for n in kept]
    return {"encoder": encoder, "max_length": max_length, "loss_plain": out["plain"][0], "loss_micro": out["micro"][0],
            "max_abs_grad_diff": max(diffs), "max_abs_grad": scale, "parameters_compared": len(diffs),
            "loss_bf16": out["bf16"][0], "min_bf16_grad_cosine": min(cosines), "bf16_tensors_compared": len(kept),
            "median_bf16_grad_cosine": sorted(cosines)[len(cosines) // 2]}


def write_results(rows: list[dict], check: dict | None, args: argparse.Namespace) -> None:
    import platform

    import sentence_transformers
    import torch
    import transformers

    from sbmoe.atomic import atomic_file, write_json

    load = os.getloadavg()
    record = {"command": " ".join(["python eval/bench_train_step.py", *sys.argv[1:]]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
              "load_average_at_end": [round(x, 2) for x in load],
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "sentence-transformers": sentence_transformers.__version__},
              "micro_batch_tokens": args.micro_batch_tokens, "rows": rows, "gradient_check": check}
    write_json(RESULTS / "bench_train_step.json", record)
    lines = ["# Training-step cost: plain padded batch vs length-sorted micro-batches", "",
             f"`{record['command']}` on {record['machine']}; torch {torch.__version__}, sentence-transformers "
             f"{sentence_transformers.__version__}. Batch 64 SQuAD triples (192 texts), encoder + paper-gate "
             f"head, AdamW; mean of {args.steps} steps after a warm-up. Load average at the end: {load[0]:.2f}.",
             "", "| encoder | max length | step | s/step | peak RSS GB | real tokens | padded tokens |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['max_length']} | {r['kind']} | {r['seconds_per_step']} | "
                     f"{r['peak_rss_gb']} | {r['real_tokens_per_batch']} | {r['padded_tokens_per_batch']} |")
    lines += ["", "Where a step's CPU time goes (one extra step under torch.profiler; share of self CPU time):", ""]
    for r in rows:
        top = ", ".join(f"`{op}` {share:.0%}" for op, share in r["profile_top_ops"])
        lines.append(f"- {r['encoder']}, length {r['max_length']}, {r['kind']}: {top}")
    if check:
        lines += ["", f"Gradient check ({check['encoder']}, length {check['max_length']}, one batch, dropout off): "
                  f"loss {check['loss_plain']:.6f} plain vs {check['loss_micro']:.6f} micro-batched; largest "
                  f"gradient difference {check['max_abs_grad_diff']:.2e} over {check['parameters_compared']} "
                  f"tensors (largest gradient {check['max_abs_grad']:.2e}). bf16 micro-batched: loss "
                  f"{check['loss_bf16']:.6f}; cosine of each gradient tensor with the fp32 plain one: median "
                  f"{check['median_bf16_grad_cosine']:.5f}, lowest {check['min_bf16_grad_cosine']:.5f} over the "
                  f"{check['bf16_tensors_compared']} tensors whose fp32 gradient norm is above 1e-4 of the largest "
                  "(the others, attention key biases and the paper gate's router, have an exact gradient of 0)."]
    with atomic_file(RESULTS / "bench_train_step.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="minilm-l3")
    parser.add_argument("--lengths", default="512,256")
    parser.add_argument("--kinds", default="micro,micro-bf16,micro-bf16-sdpa,plain")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192)
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # encoder:length:kind, run in a child process
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        encoder, length, kind = args.one.split(":")
        print(json.dumps(one_kind(encoder, int(length), kind, args.steps, args.micro_batch_tokens)))
        return
    rows = []
    for encoder in args.encoders.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            for kind in args.kinds.split(","):
                out = subprocess.run([sys.executable, __file__, "--one", f"{encoder}:{length}:{kind}", "--steps",
                                      str(args.steps), "--threads", str(args.threads), "--micro-batch-tokens",
                                      str(args.micro_batch_tokens)], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    check = None if args.no_check else gradient_check(args.encoders.split(",")[0], 256, args.micro_batch_tokens)
    write_results(rows, check, args)


if __name__ == "__main__":
    main()
