"""Kernel tests run Triton's CPU interpreter unless TRITON_INTERPRET is already set (e.g. =0 on a GPU box).

The variable is set per test (monkeypatch) rather than for the whole session, so tests elsewhere keep the
environment they were given; the kernels are decorated when first launched, inside these tests, so they
come out interpreted. A process that later leaves interpreter mode takes the torch path (runtime checks).
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", INTERPRET)


@pytest.fixture
def device() -> torch.device:
    """Where kernel operands live: CPU for the interpreter, the GPU when the kernels compile for real."""
    from sbmoe.kernels.runtime import interpret_mode

    return torch.device("cpu" if interpret_mode() or not torch.cuda.is_available() else "cuda")
