"""Calibration statistics and per-block sensitivity: the layer-output error of a quantised weight.

Only X^T X of each block's calibration inputs is kept (a ``Gram``): GPTQ's Hessian is that matrix, and the
output error ||X W - X Q||^2 = tr((W - Q)^T X^T X (W - Q)) needs nothing else. Errors are divided by the
number of calibration tokens of the whole model, so an expert's error is its mean error per routed token
times its activation frequency (MxMoE's frequency weighting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .gptq import GPTQConfig, gptq_quantize
from .rtn import GroupQuant, rtn_quantize

METHODS = ("rtn", "gptq")


@dataclass
class Gram:
    """Running X^T X (float64) and row count of one block's inputs."""

    dim: int
    xtx: Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def add(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, self.dim).to(torch.float64)
        self.xtx += rows.T @ rows
        self.count += rows.shape[0]


def output_error(weight: Tensor, approx: Tensor, gram: Gram, tokens: int) -> float:
    """Sum over the block's calibration rows of ||x W - x Q||^2, divided by ``tokens``."""
    diff = (weight - approx).to(torch.float64)
    return float(torch.einsum("kn,kj,jn->", diff, gram.xtx, diff)) / max(tokens, 1)


def quantize_weight(weight: Tensor, bits: int, method: str, group_size: int, gram: Gram | None,
                    gptq: GPTQConfig | None = None) -> GroupQuant:
    """RTN, or GPTQ against the block's Gram (RTN where no calibration row reached the block)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantisation method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "gptq" and gram is not None and gram.count > 0:
        return gptq_quantize(weight.detach().double(), gram.xtx, bits, group_size, gptq)
    return rtn_quantize(weight.detach().float(), bits, group_size)


def sensitivity_table(weights: dict[str, Tensor], grams: dict[str, Gram], candidates: list[int], tokens: int,
                      quantize: Callable[[str, int], GroupQuant]) -> dict[str, dict[int, float]]:
    """Per block and candidate bit width, the output error of the block quantised alone by ``quantize``."""
    table: dict[str, dict[int, float]] = {}
    for name, weight in weights.items():
        gram = grams.get(name)
        table[name] = {bits: output_error(weight.float(), quantize(name, bits).dequantize(), gram, tokens)
                       if gram is not None else 0.0 for bits in candidates}
    return table
