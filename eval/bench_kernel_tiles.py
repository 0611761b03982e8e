"""Tile configurations of the fused MoE GEMM at large M on a GPU (bf16): what the defaults were chosen from.

    python eval/bench_kernel_tiles.py

For the Mixtral-like shape (d 4096, h 14336, E 8, top-2) at 1,024 and 4,096 tokens and the DeepSeekMoE-like
one (d 2048, h 1408, E 64, top-6) at 4,096, ``sbmoe.kernels.moe_dispatch`` is timed with each (block_m,
block_n, block_k, warps, stages, group_m) of ``CONFIGS`` forced (the first is the launch order and tiles
before grouped ordering; a config whose tiles do not fit shared memory is recorded with Triton's error, not
shrunk). Timing as eval/bench_kernels.py (CUDA events, best of two means of 10 calls); each output is
compared with the first config's. Writes eval/results/bench_kernel_tiles.{json,md}; without a GPU, nothing.
"""

from __future__ import annotations

import functools
import sys

import torch
from bench_kernels import RESULTS, SHAPES, expert_weights, routing, seconds_per_call
from report import machine_line

from sbmoe.atomic import atomic_file, write_json

TOKENS = {"mixtral": [1024, 4096], "deepseek-moe": [4096]}  # eval/bench_kernels.py's shapes, at large M
# (block_m, block_n, block_k, num_warps, num_stages, group_m)
CONFIGS = [(64, 128, 64, 8, 3, 1), (64, 128, 64, 8, 3, 8), (128, 128, 64, 8, 3, 8), (128, 128, 64, 8, 4, 8),
           (128, 128, 64, 4, 4, 8), (128, 256, 64, 8, 3, 8), (128, 64, 64, 4, 4, 8), (128, 128, 128, 8, 3, 8),
           (64, 64, 64, 4, 4, 8), (128, 128, 32, 8, 4, 8)]
FIELDS = ("block_m", "block_n", "block_k", "warps", "stages", "group_m")


def forced(config: tuple[int, ...]):
    """Patch the tile choice of ``sbmoe.kernels`` to ``config`` (no shared-memory fitting); returns an undo."""
    import sbmoe.kernels.ffn as ffn
    import sbmoe.kernels.gemm as gemm

    saved = ffn.choose_block_m, gemm.tile_config, gemm.fit_shared_memory
    block_m, block_n, block_k, warps, stages, group_m = config
    tiles = gemm.TileConfig(block_n, block_k, warps, stages, group_m)
    ffn.choose_block_m = lambda *_: block_m
    gemm.tile_config = lambda *_: tiles
    gemm.fit_shared_memory = lambda config, *_: config

    def undo() -> None:
        ffn.choose_block_m, gemm.tile_config, gemm.fit_shared_memory = saved
    return undo


def main() -> int:
    if not torch.cuda.is_available():
        print(f"No CUDA GPU: nothing was measured or written to {RESULTS}.")
        return 0
    from sbmoe.kernels import moe_dispatch

    rows = []
    for name, grid in TOKENS.items():
        shape = SHAPES[name]
        dim, hidden, experts, top_k = shape["dim"], shape["hidden"], shape["experts"], shape["top_k"]
        w_in, w_out = expert_weights(shape, hidden, torch.bfloat16)
        for tokens in grid:
            x = torch.randn(tokens, dim, device="cuda").bfloat16()
            indices, weights = routing(tokens, experts, top_k, torch.device("cuda"))
            call = functools.partial(moe_dispatch, x, indices, weights.bfloat16(), w_in, w_out, "swiglu")
            flops, reference = 6 * tokens * top_k * dim * hidden, None
            for config in CONFIGS:
                row = {"shape": name, "tokens": tokens, **dict(zip(FIELDS, config, strict=True))}
                undo = forced(config)
                try:
                    with torch.inference_mode():
                        out = call().float()
                        reference = out if reference is None else reference
                        seconds = min(seconds_per_call(call, 10) for _ in range(2))
                    row |= {"ms": 1e3 * seconds, "tflops": flops / seconds / 1e12,
                            "err": ((out - reference).abs().max() / reference.abs().max()).item()}
                except Exception as error:  # noqa: BLE001 - Triton's OutOfResources is a result here
                    row["error"] = repr(error)[:200]
                finally:
                    undo()
                print(row, flush=True)
                rows.append(row)
    write_json(RESULTS / "bench_kernel_tiles.json", {"device": torch.cuda.get_device_name(),
                                                     "machine": machine_line(), "results": rows})
    with atomic_file(RESULTS / "bench_kernel_tiles.md") as handle:
        handle.write(markdown(rows, torch.cuda.get_device_name()))
    return 0


def markdown(rows: list[dict], device: str) -> str:
    lines = ["# Fused MoE GEMM tile configurations at large M (bf16)", "",
             f"Command: `python eval/bench_kernel_tiles.py` on {device}. The first row of each block is the launch "
             "order before grouped ordering (group_m 1).",
             "", "| shape | tokens | block_m | block_n | block_k | warps | stages | group_m | ms | TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        result = f"{r['ms']:.3f} | {r['tflops']:.0f}" if "ms" in r else f"- | {r['error'].split('(')[0]}"
        lines.append(f"| {r['shape']} | {r['tokens']} | " + " | ".join(str(r[f]) for f in FIELDS) + f" | {result} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
