"""Where Triton cannot run, every public entry is exactly its torch golden function (no kernel launched).

Runs with or without Triton installed: the 'cannot run' states are produced by patching the environment.
"""

from __future__ import annotations

import sys

import pytest
import torch
from kernel_helpers import expert_weights, random_routing

import sbmoe.kernels as kernels
from sbmoe.kernels import align, gemm, runtime


def refuse(*args, **kwargs):
    raise AssertionError("a Triton kernel was launched on the fallback path")


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any kernel launch fails the test."""
    monkeypatch.setattr(align, "_launch", refuse)
    monkeypatch.setattr(gemm, "_launch", refuse)


def all_entries_equal_golden(dtype: torch.dtype = torch.float32) -> None:
    indices, weights = random_routing(5, 2, experts=6, used=4)
    x = torch.randn(5, 16).to(dtype)
    w_in, w_out = expert_weights(6, 16, 16, "swiglu", dtype)
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(kernels.moe_dispatch(x, indices, weights, w_in, w_out),
                               kernels.moe_dispatch_ref(x, indices, weights, w_in, w_out), **exact)
    aligned = kernels.moe_align_block_size(indices, 6, 16)
    golden = kernels.moe_align_block_size_ref(indices, 6, 16)
    for name in ("sorted_ids", "expert_ids", "num_padded"):
        assert torch.equal(getattr(aligned, name), getattr(golden, name))
    torch.testing.assert_close(kernels.fused_moe_gemm(x, w_in, golden, top_k=2, activation="swiglu"),
                               kernels.fused_moe_gemm_ref(x, w_in, golden, top_k=2, activation="swiglu"), **exact)
    offsets = torch.tensor([0, 4, 4, 7, 10, 10, 10])
    x_sorted = torch.randn(10, 16).to(dtype)
    torch.testing.assert_close(kernels.grouped_ffn(x_sorted, offsets, w_in, w_out),
                               kernels.grouped_ffn_ref(x_sorted, offsets, w_in, w_out), **exact)
    packed = kernels.PackedWeight(torch.randint(0, 256, (6, 16, 8), dtype=torch.uint8), torch.rand(6, 2, 8),
                                  torch.rand(6, 2, 8) * 255, bits=8, group_size=8)
    torch.testing.assert_close(kernels.grouped_gemm(x_sorted, offsets, packed),
                               kernels.grouped_gemm_ref(x_sorted, offsets, packed), **exact)


def test_no_device_and_no_interpreter(monkeypatch: pytest.MonkeyPatch, no_launch: None) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not kernels.triton_available()
    all_entries_equal_golden()


def test_triton_not_importable(monkeypatch: pytest.MonkeyPatch, no_launch: None) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # makes ``import triton`` raise ImportError
    runtime._triton_importable.cache_clear()
    try:
        assert not kernels.triton_available()
        all_entries_equal_golden()
    finally:
        monkeypatch.undo()
        runtime._triton_importable.cache_clear()


def test_triton_available_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.triton_available()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.triton_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.triton_available()


def test_cpu_tensors_without_interpreter_stay_on_torch(monkeypatch: pytest.MonkeyPatch, no_launch: None) -> None:
    """A GPU is present but the operands are on the CPU: the kernels cannot read them."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "kernels_match_mode", lambda interpreting: True)
    assert kernels.triton_available()
    all_entries_equal_golden()


def test_gradients_and_unsupported_dtypes_stay_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the interpreter (Triton can run) autograd inputs, bf16 (broken in the interpreter) and float64
    still take the golden path, so training through these entries is exact. (The alignment kernel has no
    float operands, so it may launch here; its result is still compared with the golden one.)"""
    pytest.importorskip("triton")
    if not runtime.interpret_mode():  # compiled on a GPU (conftest's TRITON_INTERPRET=0): the kernels imported
        # interpreted here would stay so for the rest of the process, and every compiled kernel test would skip
        pytest.skip("needs the interpreter; run where TRITON_INTERPRET is not 0")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gemm, "_launch", refuse)
    assert kernels.triton_available()
    all_entries_equal_golden(torch.bfloat16)
    all_entries_equal_golden(torch.float64)
    indices, weights = random_routing(4, 2, experts=4)
    x = torch.randn(4, 16, requires_grad=True)
    w_in, w_out = (w.requires_grad_() for w in expert_weights(4, 16, 16, "gelu", torch.float32))
    out = kernels.moe_dispatch(x, indices, weights, w_in, w_out, "gelu")
    expected = kernels.moe_dispatch_ref(x, indices, weights, w_in, w_out, "gelu")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (x, w_in, w_out))
    for got, ref in zip(grads, torch.autograd.grad(expected.sum(), (x, w_in, w_out)), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_bad_arguments_raise_on_every_path() -> None:
    w_in, w_out = expert_weights(4, 8, 8, "swiglu", torch.float32)
    with pytest.raises(ValueError, match="activation"):
        kernels.grouped_ffn(torch.randn(2, 8), torch.tensor([0, 2, 2, 2, 2]), w_in, w_out, kind="relu")
    with pytest.raises(ValueError, match="w_in width"):
        kernels.moe_dispatch(torch.randn(2, 8), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), w_in,
                             w_in.transpose(1, 2))
    with pytest.raises(ValueError, match="aligned slots"):
        aligned = kernels.moe_align_block_size_ref(torch.zeros(3, 1, dtype=torch.long), 4, 16)
        kernels.fused_moe_gemm(torch.randn(2, 8), w_in, aligned)
