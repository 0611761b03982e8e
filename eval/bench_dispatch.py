"""Token dispatch: sort-based (align + grouped FFN) vs a per-expert masked loop, tokens/s.

    python eval/bench_dispatch.py [--tokens 4096] [--dim 256] [--hidden 256] [--repeats 20]

Forward + backward of one SwiGLU MoE FFN at E = 8, 32, 64 and top-k 1, 2 (random routing, same weights
for every path), on the CPU here or on a GPU where one is available. Two baselines: the per-expert masked
loop over unbound weight views (``masked_loop_dispatch``: the fair one, same matmuls), and the same loop
indexing the stacked weights per expert (``w[e]``), as stacked-expert code is often written.
Writes eval/results/bench_dispatch.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from sbmoe.atomic import write_json
from sbmoe.moe.dispatch import activation, masked_loop_dispatch, moe_dispatch

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


def tokens_per_s(fn, x, indices, weights, w_in, w_out, repeats: int) -> float:
    def step() -> None:
        out = fn(x, indices, weights, w_in, w_out, "swiglu")
        out.sum().backward()

    for _ in range(3):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for experts in (8, 32, 64):
        for top_k in (1, 2):
            torch.manual_seed(0)
            x = torch.randn(args.tokens, args.dim, device=device, requires_grad=True)
            w_in = (torch.randn(experts, args.dim, 2 * args.hidden, device=device) / args.dim ** 0.5).requires_grad_()
            w_out = (torch.randn(experts, args.hidden, args.dim, device=device) / args.hidden ** 0.5).requires_grad_()
            indices = torch.stack([torch.randperm(experts, device=device)[:top_k] for _ in range(args.tokens)])
            weights = torch.softmax(torch.randn(args.tokens, top_k, device=device), -1)
            sort_based = tokens_per_s(moe_dispatch, x, indices, weights, w_in, w_out, args.repeats)
            masked = tokens_per_s(masked_loop_dispatch, x, indices, weights, w_in, w_out, args.repeats)
            indexed = tokens_per_s(indexed_loop_dispatch, x, indices, weights, w_in, w_out, args.repeats)
            rows.append({"experts": experts, "top_k": top_k, "sort_tokens_per_s": round(sort_based),
                         "masked_loop_tokens_per_s": round(masked), "speedup": round(sort_based / masked, 3),
                         "indexed_loop_tokens_per_s": round(indexed),
                         "speedup_vs_indexed_loop": round(sort_based / indexed, 3)})
    print(f"{'E':>3} {'k':>2} {'sort tok/s':>11} {'loop tok/s':>11} {'speedup':>8} {'indexed loop':>13} {'speedup':>8}")
    for r in rows:
        print(f"{r['experts']:>3} {r['top_k']:>2} {r['sort_tokens_per_s']:>11} {r['masked_loop_tokens_per_s']:>11} "
              f"{r['speedup']:8.2f} {r['indexed_loop_tokens_per_s']:>13} {r['speedup_vs_indexed_loop']:8.2f}")
    write_json(RESULTS / "bench_dispatch.json", {
        "device": device if device == "cpu" else torch.cuda.get_device_name(), "settings": vars(args),
        "results": rows,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    })


if __name__ == "__main__":
    main()
