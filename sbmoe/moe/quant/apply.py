"""Apply a bit allocation to a model: quantise each block at its width (cached per block and width, so
arms that share widths share work), write the fake-quant values into the model, or restore the originals.

``plan_bits`` turns a ``QuantConfig`` into widths: the same width everywhere (rtn, gptq) or MxMoE's
integer program over the blocks' sensitivities (``allocation.allocate``).
"""

from __future__ import annotations

from torch import Tensor

from .allocation import Allocation, allocate, expert_ties
from .config import QuantConfig
from .gptq import GPTQConfig
from .rtn import GroupQuant
from .sensitivity import quantize_weight, sensitivity_table
from .targets import QuantTarget


class BlockQuantizer:
    """Quantises a target's blocks (RTN or GPTQ against the target's Grams) and swaps weights in and out."""

    def __init__(self, target: QuantTarget, method: str, group_size: int = 128, gptq: GPTQConfig | None = None):
        self.target, self.method, self.group_size, self.gptq = target, method, group_size, gptq
        self.originals = target.weights()
        self._cache: dict[tuple[str, int], GroupQuant] = {}

    def quantized(self, name: str, bits: int) -> GroupQuant:
        key = (name, bits)
        if key not in self._cache:
            self._cache[key] = quantize_weight(self.originals[name], bits, self.method, self.group_size,
                                               self.target.grams.get(name), self.gptq)
        return self._cache[key]

    def sensitivity(self, candidates: list[int]) -> dict[str, dict[int, float]]:
        return sensitivity_table(self.originals, self.target.grams, candidates, self.target.tokens, self.quantized)

    def apply(self, bits: dict[str, int]) -> dict[str, GroupQuant]:
        """Write every block's fake-quant weight at its width into the model; returns the quantised blocks."""
        out = {name: self.quantized(name, width) for name, width in bits.items()}
        for name, quantized in out.items():
            self.target.slots[name].set(quantized.dequantize())
        return out

    def restore(self) -> None:
        for name, weight in self.originals.items():
            self.target.slots[name].set(weight)


def gptq_config(config: QuantConfig) -> GPTQConfig:
    return GPTQConfig(block_size=config.block_size, damp=config.damp, act_order=config.act_order)


def plan_bits(target: QuantTarget, quantizer: BlockQuantizer, config: QuantConfig) -> tuple[dict[str, int],
                                                                                           Allocation | None]:
    """Widths per block for ``config``: uniform, or MxMoE's allocation (returned beside them)."""
    if config.method != "mxmoe":
        return {b.name: int(config.bits) for b in target.blocks}, None
    blocks = expert_ties(target.blocks) if config.granularity == "expert" else target.blocks
    result = allocate(blocks, quantizer.sensitivity(list(config.candidates)), list(config.candidates),
                      config.bits, config.weight)
    return result.bits, result


def quantize_target(target: QuantTarget, config: QuantConfig) -> tuple[dict[str, GroupQuant], Allocation | None]:
    """Quantise a calibrated (or, for rtn, uncalibrated) target in place; returns its blocks and allocation."""
    quantizer = BlockQuantizer(target, config.quantizer, config.group_size, gptq_config(config))
    bits, allocation = plan_bits(target, quantizer, config)
    return quantizer.apply(bits), allocation


def fake_weights(quantized: dict[str, GroupQuant]) -> dict[str, Tensor]:
    return {name: q.dequantize() for name, q in quantized.items()}
