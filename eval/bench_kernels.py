"""Triton fused MoE forward vs the torch dispatch paths on a GPU: tokens/s, TFLOP/s and GB/s against ceilings.

    python eval/bench_kernels.py [--dtype bf16] [--tokens 1,4,16,64,256,1024,4096] [--repeats 20] [--rounds 3]
    python eval/bench_kernels.py --check     # no GPU: a tiny correctness pass in Triton's CPU interpreter

Three forward paths of one SwiGLU MoE FFN (inference, no autograd), same weights and random routing:
``triton`` (``sbmoe.kernels.moe_dispatch``: block alignment + two fused grouped GEMMs; the run stops if it
launched no kernel), ``sort`` (the torch sort-based path, ``sbmoe.moe.dispatch.sort_dispatch``) and
``masked_loop`` (one masked gather per expert: the torch per-expert loop).
Three shapes: Mixtral-like (d 4096, h 14336, E 8, top-2; h is halved until the run fits in 60% of free GPU
memory, and the JSON says so), DeepSeekMoE-like routed experts (d 2048, h 1408, E 64, top-6: the E = 64
target) and the SB-MoE head (d 384, h 192, E 6, top-1). Each figure is the median of
``--rounds`` rounds, each the mean of ``--repeats`` timed calls after warm-up, the paths timed in turn.

Ceilings are measured on the same GPU: ``peak`` = TFLOP/s of a large square matmul in the bench dtype,
``copy`` = GB/s of a 1 GiB device-to-device copy (read + write). FLOPs count the expert matmuls
(6 d h per slot); bytes count the least any path must move: the weights of every expert that received a
token, x read once, the output written once. ``roofline`` = max(FLOPs / peak, bytes / copy) / time, the
share of the better of the two ceilings a path reaches. The triton path is also checked against ``sort``
(max |diff| / max |sort|). Writes eval/results/bench_kernels.{json,md}; without a GPU it writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from report import machine_line

from sbmoe.atomic import atomic_file, write_json
from sbmoe.moe.dispatch import masked_loop_dispatch, sort_dispatch

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHAPES = {
    "mixtral": {"dim": 4096, "hidden": 14336, "experts": 8, "top_k": 2},
    "deepseek-moe": {"dim": 2048, "hidden": 1408, "experts": 64, "top_k": 6},
    "sbmoe-head": {"dim": 384, "hidden": 192, "experts": 6, "top_k": 1},
}

Dispatch = Callable[..., torch.Tensor]


def routing(tokens: int, experts: int, top_k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random experts per token and softmax weights."""
    indices = torch.rand(tokens, experts, device=device).topk(top_k, dim=-1).indices
    return indices, torch.softmax(torch.randn(tokens, top_k, device=device), dim=-1)


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds of ``repeats`` calls, timed with CUDA events after three warm-up calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def matmul_ceiling(dtype: torch.dtype, repeats: int, size: int = 8192) -> float:
    """TFLOP/s of a large square matmul in ``dtype``: the compute roofline of this GPU."""
    a, b = (torch.randn(size, size, device="cuda", dtype=dtype) for _ in range(2))
    out = torch.empty(size, size, device="cuda", dtype=dtype)
    return 2 * size ** 3 / seconds_per_call(functools.partial(torch.mm, a, b, out=out), repeats) / 1e12


def copy_ceiling(repeats: int, size: int = 2 ** 30) -> float:
    """GB/s of a device-to-device copy, bytes read plus written: the memory roofline of this GPU."""
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * size / seconds_per_call(functools.partial(dst.copy_, src), repeats) / 1e9


def fitted_hidden(shape: dict[str, int], dtype: torch.dtype, max_tokens: int) -> int:
    """The largest h (halving from the nominal one) whose weights plus the paths' activations fit in 60% of
    free GPU memory."""
    free, _ = torch.cuda.mem_get_info()
    size = torch.empty((), dtype=dtype).element_size()
    hidden = shape["hidden"]
    while hidden > 64:
        weights = shape["experts"] * 3 * shape["dim"] * hidden
        activations = 4 * max_tokens * shape["top_k"] * (3 * hidden + 2 * shape["dim"])
        if (weights + activations) * size <= 0.6 * free:
            break
        hidden //= 2
    return hidden


def launched_kernels(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()``, refusing a result that no Triton GEMM computed: a silent fallback to torch would make the
    triton arm time the torch path (it did once: the sort arm itself dispatched to the kernels on a GPU)."""
    from sbmoe.kernels import gemm

    launches = []
    launch = gemm._launch

    def counted(*args, **kwargs):
        launches.append(1)
        return launch(*args, **kwargs)

    gemm._launch = counted
    try:
        out = fn()
    finally:
        gemm._launch = launch
    if not launches:
        raise SystemExit("the triton arm launched no kernel (it fell back to torch); nothing was written")
    return out


def expert_weights(shape: dict[str, int], hidden: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded SwiGLU expert weights of ``shape`` with width ``hidden`` on the GPU: w_in (E, d, 2h), w_out (E, h, d)."""
    experts, dim = shape["experts"], shape["dim"]
    torch.manual_seed(0)
    w_in = (torch.randn(experts, dim, 2 * hidden, device="cuda") / dim ** 0.5).to(dtype)
    w_out = (torch.randn(experts, hidden, dim, device="cuda") / hidden ** 0.5).to(dtype)
    return w_in, w_out


def bench_shape(name: str, shape: dict[str, int], tokens_grid: list[int], dtype: torch.dtype,
                args: argparse.Namespace,
                limits: dict[str, float]) -> list[dict]:
    from sbmoe.kernels import moe_dispatch as triton_dispatch

    dim, experts, top_k = shape["dim"], shape["experts"], shape["top_k"]
    hidden = fitted_hidden(shape, dtype, max(tokens_grid))
    w_in, w_out = expert_weights(shape, hidden, dtype)
    paths: dict[str, Dispatch] = {"triton": triton_dispatch, "sort": sort_dispatch, "masked_loop": masked_loop_dispatch}
    size = w_in.element_size()
    rows = []
    for tokens in tokens_grid:
        x = torch.randn(tokens, dim, device="cuda", dtype=dtype)
        indices, weights = routing(tokens, experts, top_k, torch.device("cuda"))
        weights = weights.to(dtype)
        with torch.inference_mode():
            operands = (x, indices, weights, w_in, w_out, "swiglu")
            got = launched_kernels(functools.partial(triton_dispatch, *operands)).float()
            reference = sort_dispatch(*operands).float()
            error = ((got - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
            timings: dict[str, list[float]] = {path: [] for path in paths}
            for _ in range(args.rounds):
                for path, fn in paths.items():
                    call = functools.partial(fn, x, indices, weights, w_in, w_out, "swiglu")
                    timings[path].append(seconds_per_call(call, args.repeats))
        touched = int(torch.unique(indices).numel())
        flops = 6 * tokens * top_k * dim * hidden
        moved = touched * 3 * dim * hidden * size + 2 * tokens * dim * size
        bound = max(flops / (limits["peak_tflops"] * 1e12), moved / (limits["copy_gbps"] * 1e9))
        row = {"shape": name, "tokens": tokens, "dim": dim, "hidden": hidden, "experts": experts, "top_k": top_k,
               "triton_rel_error": error}
        for path, times in timings.items():
            seconds = statistics.median(times)
            row[path] = {"tokens_per_s": tokens / seconds, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12,
                         "gbps": moved / seconds / 1e9, "roofline": bound / seconds}
        row["speedup_vs_sort"] = row["sort"]["ms"] / row["triton"]["ms"]
        row["speedup_vs_masked_loop"] = row["masked_loop"]["ms"] / row["triton"]["ms"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: one per (shape, tokens)."""
    lines = ["| shape | tokens | h | triton tok/s | sort tok/s | loop tok/s | vs sort | vs loop | triton TFLOP/s | "
             "triton GB/s | triton roofline | sort roofline | rel err |", "|" + "---|" * 13]
    for r in rows:
        t, s, m = r["triton"], r["sort"], r["masked_loop"]
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['hidden']} | {t['tokens_per_s']:,.0f} | "
                     f"{s['tokens_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {r['speedup_vs_sort']:.2f}x | "
                     f"{r['speedup_vs_masked_loop']:.2f}x | {t['tflops']:.1f} | {t['gbps']:.0f} | "
                     f"{t['roofline']:.0%} | {s['roofline']:.0%} | {r['triton_rel_error']:.1e} |")
    return lines


def interpreter_check() -> None:
    """No GPU: run both entry points on tiny shapes in Triton's CPU interpreter against the torch path."""
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel modules are first imported, below
    from sbmoe.kernels import moe_dispatch as triton_dispatch
    from sbmoe.kernels import triton_available

    if not triton_available():
        print("Triton is not installed: nothing to check.")
        return
    for dtype in (torch.float32, torch.float16):
        for experts, top_k in ((6, 1), (8, 2)):
            torch.manual_seed(0)
            x = torch.randn(9, 32).to(dtype)
            w_in = (torch.randn(experts, 32, 64) / 32 ** 0.5).to(dtype)
            w_out = (torch.randn(experts, 32, 32) / 32 ** 0.5).to(dtype)
            indices, weights = routing(9, experts, top_k, torch.device("cpu"))
            weights = weights.to(dtype)
            operands = (x, indices, weights, w_in, w_out, "swiglu")
            got = launched_kernels(functools.partial(triton_dispatch, *operands)).float()
            expected = sort_dispatch(x, indices, weights, w_in, w_out, "swiglu").float()
            error = ((got - expected).abs().max() / expected.abs().max()).item()
            print(f"interpreter check {str(dtype):>13} E={experts} top-{top_k}: rel error {error:.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--tokens", default="1,4,16,64,256,1024,4096", help="comma-separated token counts")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {list(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="without a GPU: tiny interpreter correctness pass")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"No CUDA GPU: no kernel timings were measured and nothing was written to {RESULTS}.")
        if args.check:
            interpreter_check()
        return 0
    from sbmoe.kernels import triton_available

    if not triton_available():
        print("Triton is not importable: the kernels would fall back to torch; nothing was measured or written.")
        return 0
    import triton

    dtype = DTYPES[args.dtype]
    tokens_grid = [int(t) for t in args.tokens.split(",")]
    limits = {"peak_tflops": matmul_ceiling(dtype, args.repeats), "copy_gbps": copy_ceiling(args.repeats)}
    torch.cuda.empty_cache()
    rows = []
    for name in args.shapes.split(","):
        rows += bench_shape(name, SHAPES[name], tokens_grid, dtype, args, limits)
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    header = (f"{gpu}, {args.dtype}: matmul ceiling {limits['peak_tflops']:.0f} TFLOP/s, "
              f"copy ceiling {limits['copy_gbps']:.0f} GB/s")
    lines = table(rows)
    print(header)
    print("\n".join(lines))
    scaled = sorted({r["shape"] for r in rows if r["hidden"] != SHAPES[r["shape"]]["hidden"]})
    write_json(RESULTS / "bench_kernels.json", {
        "device": gpu, "dtype": args.dtype, "settings": vars(args), "ceilings": limits,
        "scaled_down_shapes": scaled, "torch": torch.__version__, "triton": triton.__version__,
        "machine": machine_line(), "results": rows,
    })
    command = "python eval/bench_kernels.py " + " ".join(sys.argv[1:])
    notes = [f"Shapes with h halved to fit GPU memory: {', '.join(scaled)}."] if scaled else []
    with atomic_file(RESULTS / "bench_kernels.md") as handle:
        handle.write("\n".join([
            "# Triton fused MoE forward vs torch dispatch", "", f"Command: `{command.strip()}`", "", header + ".",
            "Roofline: max(FLOPs / matmul ceiling, minimum bytes / copy ceiling) / time.", *notes, "", *lines, "",
        ]))
    if any(not math.isfinite(r["triton_rel_error"]) or r["triton_rel_error"] > 2e-2 for r in rows):
        print("WARNING: the triton path disagrees with the torch path beyond 2e-2 on some rows (see rel err)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
