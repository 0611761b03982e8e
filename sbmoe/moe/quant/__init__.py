"""Mixed-precision post-training quantisation of MoE models: RTN and GPTQ at any width 1-8, packed int4/int8
storage (``sbmoe.kernels.quant``'s format) with a dequant matmul path, MxMoE's bit allocation by integer
programming, and the MoE PTQ benchmark's allocation heuristics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...lazy import exports_of, lazy_exports

if TYPE_CHECKING:
    from .allocation import Allocation, CostModel, allocate, allocate_brute_force, expert_ties, sweep
    from .apply import BlockQuantizer, plan_bits, quantize_target
    from .blocks import LinearBlock, average_bits
    from .config import QuantConfig
    from .gptq import GPTQConfig, gptq_quantize
    from .heuristics import HEURISTICS, heuristic_allocation, outlier_score
    from .packed_model import PackedExpertBank, install_packed
    from .packing import PackedLinear, pack, packed_matmul, packed_state
    from .rtn import GroupQuant, rtn_quantize
    from .sensitivity import Gram, output_error
    from .targets import QuantTarget, calibrate_lm, calibrate_sbmoe, lm_target, sbmoe_target

# Submodules load on first use: ``sbmoe quantize --help`` needs only QuantConfig, not torch or scipy.
_SUBMODULES = {
    ".allocation": ("Allocation", "CostModel", "allocate", "allocate_brute_force", "expert_ties", "sweep"),
    ".apply": ("BlockQuantizer", "plan_bits", "quantize_target"),
    ".blocks": ("LinearBlock", "average_bits"),
    ".config": ("QuantConfig",),
    ".gptq": ("GPTQConfig", "gptq_quantize"),
    ".heuristics": ("HEURISTICS", "heuristic_allocation", "outlier_score"),
    ".packed_model": ("PackedExpertBank", "install_packed"),
    ".packing": ("PackedLinear", "pack", "packed_matmul", "packed_state"),
    ".rtn": ("GroupQuant", "rtn_quantize"),
    ".sensitivity": ("Gram", "output_error"),
    ".targets": ("QuantTarget", "calibrate_lm", "calibrate_sbmoe", "lm_target", "sbmoe_target"),
}
__getattr__, __dir__ = lazy_exports(__name__, exports_of(_SUBMODULES))

__all__ = [
    "HEURISTICS", "Allocation", "BlockQuantizer", "CostModel", "GPTQConfig", "Gram", "GroupQuant", "LinearBlock",
    "PackedExpertBank", "PackedLinear", "QuantConfig", "QuantTarget", "allocate", "allocate_brute_force",
    "average_bits", "calibrate_lm", "calibrate_sbmoe", "expert_ties", "gptq_quantize", "heuristic_allocation",
    "install_packed", "lm_target", "outlier_score", "output_error", "pack", "packed_matmul", "packed_state",
    "plan_bits", "quantize_target", "rtn_quantize", "sbmoe_target", "sweep",
]
