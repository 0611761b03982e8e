"""Token dispatch: sort-based (align + grouped FFN) vs a per-expert masked loop, tokens/s.

    python eval/bench_dispatch.py [--tokens 4096] [--dim 256] [--hidden 256] [--repeats 10] [--rounds 3]

Forward + backward of one SwiGLU MoE FFN at E = 8, 32, 64 and top-k 1, 2 (random routing, same weights
for every path, gradients reset to None each step as ``optimizer.zero_grad()`` does), on the CPU here or
on a GPU where one is available. The paths are timed in turn, ``--rounds`` times; each figure is the
median round. Two baselines: the per-expert masked loop over unbound weight views
(``masked_loop_dispatch``: the fair one, same matmuls), and the same loop indexing the stacked weights per
expert (``w[e]``), as stacked-expert code is often written.

Two bounds say how much any exact dispatch could gain over the loop on this machine:
``gemm_floor``: the six per-group matmuls of forward + backward alone (no gather, activation, scatter or
autograd; outputs preallocated), on the same groups; ``peak``: the step's matmul FLOPs at the rate of one
large matmul (tokens x dim @ dim x 2 hidden). Writes eval/results/bench_dispatch.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import machine_line

from sbmoe.atomic import write_json
from sbmoe.moe.dispatch import activation, align_by_expert, masked_loop_dispatch, sort_dispatch

RESULTS = Path(__file__).resolve().parent / "results"


def indexed_loop_dispatch(x, indices, weights, w_in, w_out, kind: str):
    """The masked loop as often written over stacked weights: ``w_in[e]`` inside the loop, whose backward
    writes each expert's gradient into a fresh full-size zero tensor (O(E) weight-sized copies a step)."""
    out = torch.zeros_like(x)
    for expert in range(w_in.shape[0]):
        token, choice = torch.nonzero(indices == expert, as_tuple=True)
        if token.numel():
            y = activation(x[token] @ w_in[expert], kind) @ w_out[expert]
            out.index_add_(0, token, y * weights[token, choice].unsqueeze(-1))
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def dispatch_step(fn, x, indices, weights, w_in, w_out) -> Callable[[], None]:
    def step() -> None:
        for leaf in (x, w_in, w_out):
            leaf.grad = None
        fn(x, indices, weights, w_in, w_out, "swiglu").sum().backward()

    return step


def gemm_floor_step(indices: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> Callable[[], None]:
    """The per-group matmuls of one forward + backward, nothing else: H = X Wi, Y = A Wo; dA = dY Wo^T,
    dWo = A^T dY, dX = dH Wi^T, dWi = X^T dH, each into a preallocated output."""
    offsets = align_by_expert(indices, w_in.shape[0]).offsets.tolist()
    rows, dim, hidden = indices.numel(), w_in.shape[1], w_out.shape[1]
    make = lambda *shape: torch.randn(*shape, device=w_in.device)  # noqa: E731
    x, h, a, dy, da, dh, dx = (make(rows, n) for n in (dim, 2 * hidden, hidden, dim, hidden, 2 * hidden, dim))
    y, dwi, dwo = make(rows, dim), torch.empty_like(w_in), torch.empty_like(w_out)
    wi, wo = w_in.detach(), w_out.detach()
    groups = [(e, lo, hi) for e, (lo, hi) in enumerate(itertools.pairwise(offsets)) if hi > lo]

    def step() -> None:
        for e, lo, hi in groups:
            torch.mm(x[lo:hi], wi[e], out=h[lo:hi])
            torch.mm(a[lo:hi], wo[e], out=y[lo:hi])
            torch.mm(dy[lo:hi], wo[e].t(), out=da[lo:hi])
            torch.mm(a[lo:hi].t(), dy[lo:hi], out=dwo[e])
            torch.mm(dh[lo:hi], wi[e].t(), out=dx[lo:hi])
            torch.mm(x[lo:hi].t(), dh[lo:hi], out=dwi[e])

    return step


def peak_matmul_flops(tokens: int, dim: int, hidden: int, device: torch.device, repeats: int) -> float:
    """FLOP/s of one large matmul, the best rate this machine's BLAS reaches at these widths."""
    a, b = torch.randn(tokens, dim, device=device), torch.randn(dim, 2 * hidden, device=device)
    out = torch.empty(tokens, 2 * hidden, device=device)
    seconds = seconds_per_step(lambda: torch.mm(a, b, out=out), device, 5 * repeats)
    return 2 * tokens * dim * 2 * hidden / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_matmul_flops(args.tokens, args.dim, args.hidden, device, args.repeats)
    rows = []
    for experts in (8, 32, 64):
        for top_k in (1, 2):
            torch.manual_seed(0)
            x = torch.randn(args.tokens, args.dim, device=device, requires_grad=True)
            w_in = (torch.randn(experts, args.dim, 2 * args.hidden, device=device) / args.dim ** 0.5).requires_grad_()
            w_out = (torch.randn(experts, args.hidden, args.dim, device=device) / args.hidden ** 0.5).requires_grad_()
            indices = torch.stack([torch.randperm(experts, device=device)[:top_k] for _ in range(args.tokens)])
            weights = torch.softmax(torch.randn(args.tokens, top_k, device=device), -1)
            paths = {"sort": sort_dispatch, "masked_loop": masked_loop_dispatch, "indexed_loop": indexed_loop_dispatch}
            steps = {name: dispatch_step(fn, x, indices, weights, w_in, w_out) for name, fn in paths.items()}
            steps["gemm_floor"] = gemm_floor_step(indices, w_in, w_out)
            timings: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(args.rounds):
                for name, step in steps.items():
                    timings[name].append(seconds_per_step(step, device, args.repeats))
            rate = {name: args.tokens / statistics.median(times) for name, times in timings.items()}
            flops = 3 * 2 * args.tokens * top_k * args.dim * 3 * args.hidden  # fwd + 2x bwd, both matmuls
            rows.append({
                "experts": experts, "top_k": top_k,
                **{f"{name}_tokens_per_s": round(value) for name, value in rate.items()},
                "speedup": round(rate["sort"] / rate["masked_loop"], 3),
                "speedup_vs_indexed_loop": round(rate["sort"] / rate["indexed_loop"], 3),
                "gemm_floor_bound": round(rate["gemm_floor"] / rate["masked_loop"], 3),
                "peak_bound": round(args.tokens / (flops / peak) / rate["masked_loop"], 3),
            })
    print(f"largest-matmul rate: {peak / 1e9:.1f} GFLOP/s")
    header = ("E", "k", "sort tok/s", "loop tok/s", "speedup", "idx loop", "speedup", "floor tok/s", "floor bound",
              "peak bound")
    print(" ".join(f"{h:>11}" for h in header))
    for r in rows:
        cells = (r["experts"], r["top_k"], r["sort_tokens_per_s"], r["masked_loop_tokens_per_s"], f"{r['speedup']:.2f}",
                 r["indexed_loop_tokens_per_s"], f"{r['speedup_vs_indexed_loop']:.2f}", r["gemm_floor_tokens_per_s"],
                 f"{r['gemm_floor_bound']:.2f}", f"{r['peak_bound']:.2f}")
        print(" ".join(f"{c:>11}" for c in cells))
    write_json(RESULTS / "bench_dispatch.json", {
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(), "settings": vars(args),
        "peak_matmul_gflops": round(peak / 1e9, 1), "results": rows,
        "machine": machine_line(),
    })


if __name__ == "__main__":
    main()
