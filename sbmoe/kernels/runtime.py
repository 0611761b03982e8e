"""When the Triton kernels can run, and the per-call check every public entry makes before launching one."""

from __future__ import annotations

import functools
import os
import sys

import torch
from torch import Tensor

# bf16 is excluded under the interpreter: its numpy emulation of bf16 is broken, so the torch path is exact there
_GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRETER_DTYPES = (torch.float32, torch.float16)


@functools.cache
def _triton_importable() -> bool:
    """Cached: a failed import is slow and does not start working later in the same process."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install (missing libs, ABI mismatch) counts as absent, not as a crash
        return False
    return True


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET, read as Triton reads it)."""
    if not _triton_importable():
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in {"1", "true", "on", "yes"}


_KERNEL_MODULES = ("sbmoe.kernels._triton_align", "sbmoe.kernels._triton_gemm")


def kernels_match_mode(interpreting: bool) -> bool:
    """``triton.jit`` fixes a kernel as compiled or interpreted when its module is imported; after the mode
    changes within a process those kernels are not the ones the mode needs, so the torch path is used."""
    modules = (sys.modules.get(name) for name in _KERNEL_MODULES)
    return all(interpreting == module.INTERPRETED for module in modules if module is not None)


def triton_available() -> bool:
    """Triton is importable and has somewhere to run: a CUDA device or the interpreter."""
    return _triton_importable() and (torch.cuda.is_available() or interpret_mode())


def can_launch(*operands: Tensor, aux: tuple[Tensor, ...] = ()) -> bool:
    """Whether a kernel may take these tensors; otherwise the entry point uses its torch golden function.

    The kernels are forward-only, so anything autograd must differentiate goes to torch; on a GPU every
    tensor must live there (the interpreter takes CPU tensors). The float ``operands`` (activations,
    weights) must share one dtype the kernels compile for; ``aux`` tensors (routing weights, indices) are
    read in their own dtype, so only their device and autograd state matter.
    """
    if not triton_available():
        return False
    tensors = (*operands, *aux)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    interpreting = interpret_mode()
    if not kernels_match_mode(interpreting):
        return False
    if not interpreting and any(t.device.type != "cuda" for t in tensors):
        return False
    floats = {t.dtype for t in operands if t.is_floating_point()}
    allowed = _INTERPRETER_DTYPES if interpreting else _GPU_DTYPES
    return len(floats) <= 1 and floats <= set(allowed)
