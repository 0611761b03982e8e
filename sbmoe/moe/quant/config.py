"""Settings of ``sbmoe quantize`` and of the library calls behind it, defined once (and importable without
torch or scipy, so the command line shows them before anything heavy loads)."""

from __future__ import annotations

from dataclasses import dataclass

QUANT_METHODS = ("rtn", "gptq", "mxmoe")
GRANULARITIES = ("linear", "expert")  # MxMoE: one width per linear block, or per expert
MIN_BITS, MAX_BITS = 1, 8  # the widths the quantisers (``rtn``, ``gptq``, ``packing``) support


@dataclass
class QuantConfig:
    """``bits``: the uniform width (rtn, gptq) or the average-bits budget (mxmoe)."""

    bits: float = 4.0
    method: str = "rtn"
    group_size: int = 128
    candidates: tuple[int, ...] = (2, 3, 4, 8)  # MxMoE's choice of widths per block
    mxmoe_quantizer: str = "gptq"  # the quantiser that realises MxMoE's widths
    weight: float = 1.0  # MxMoE's accuracy/performance weight r (1: accuracy only)
    granularity: str = "linear"  # linear | expert (one width per expert)
    attention: bool = True  # quantise the LM's attention projections too
    calib_tokens: int = 16384  # LM calibration tokens (random training windows)
    calib_texts: int = 512  # SB-MoE calibration documents
    calib_data: str = "scifact"  # SB-MoE calibration corpus (dataset name or folder)
    seed: int = 0  # picks the calibration sample
    block_size: int = 128  # GPTQ lazy-batch block
    damp: float = 0.01  # GPTQ dampening, share of the mean Hessian diagonal
    act_order: bool = False  # GPTQ column order by decreasing Hessian diagonal

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(QUANT_METHODS)}")
        if self.mxmoe_quantizer not in ("rtn", "gptq"):
            raise ValueError(f"mxmoe_quantizer must be rtn or gptq, got {self.mxmoe_quantizer!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if not MIN_BITS <= self.bits <= MAX_BITS or (self.method != "mxmoe" and self.bits != int(self.bits)):
            raise ValueError(f"bits {self.bits}: rtn and gptq take a whole width in {MIN_BITS}..{MAX_BITS}, "
                             "mxmoe an average in that range")
        if not self.candidates or not all(MIN_BITS <= int(c) <= MAX_BITS for c in self.candidates):
            raise ValueError(f"candidates {self.candidates}: widths must lie in {MIN_BITS}..{MAX_BITS}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")

    @property
    def quantizer(self) -> str:
        """The quantiser behind the chosen widths."""
        return self.mxmoe_quantizer if self.method == "mxmoe" else self.method
