"""RTN against hand examples, GPTQ against a naive float64 OBS reference, packed storage round trips."""

from __future__ import annotations

import pytest
import torch

from sbmoe.kernels import unpack_int4
from sbmoe.moe.quant import GPTQConfig, PackedLinear, gptq_quantize, pack, packed_matmul, rtn_quantize
from sbmoe.moe.quant.rtn import GroupQuant


def test_rtn_matches_hand_examples() -> None:
    one_bit = rtn_quantize(torch.tensor([[-1.0], [-0.2], [0.3], [1.0]]), bits=1, group_size=4)
    assert one_bit.scale.item() == 2.0 and one_bit.zero.item() == 0.5
    assert one_bit.q.flatten().tolist() == [0, 0, 1, 1]
    assert one_bit.dequantize().flatten().tolist() == [-1.0, -1.0, 1.0, 1.0]
    # two groups of two rows, two columns: each group's grid spans its own [min, max]
    w = torch.tensor([[0.0, 1.0], [3.0, 1.0], [10.0, -4.0], [40.0, 2.0]])
    grouped = rtn_quantize(w, bits=2, group_size=2)
    assert grouped.scale.tolist() == [[1.0, 1.0], [10.0, 2.0]]
    assert grouped.q.tolist() == [[0, 0], [3, 0], [0, 0], [3, 3]]
    assert torch.equal(grouped.dequantize(), w)  # every value sits on its grid
    assert rtn_quantize(torch.full((4, 1), 0.37), bits=3, group_size=4).dequantize().flatten().tolist() == \
        pytest.approx([0.37] * 4)  # a constant group is kept exactly


def naive_gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, damp: float) -> torch.Tensor:
    """Unblocked GPTQ in float64: quantise row i, apply the OBS update with the full inverse Hessian, then
    remove row i from that inverse. Returns the integers."""
    w, maxq = weight.clone(), 2 ** bits - 1
    h = hessian + damp * hessian.diagonal().mean() * torch.eye(len(hessian), dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    q = torch.zeros_like(w)
    for i in range(w.shape[0]):
        if i % group == 0:
            lo, hi = w[i:i + group].min(0).values, w[i:i + group].max(0).values
            scale = (hi - lo) / maxq
            zero = -lo / scale
        q[i] = torch.clamp(torch.round(w[i] / scale + zero), 0, maxq)
        err = (w[i] - (q[i] - zero) * scale) / hinv[i, i]
        w -= torch.outer(hinv[:, i], err)
        hinv = hinv - torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q


def calibration(k_in: int, tokens: int = 256, seed: int = 0) -> torch.Tensor:
    """Correlated activations (a random mixing of independent features), as real layer inputs are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, k_in, generator=g, dtype=torch.float64) @ torch.randn(k_in, k_in, generator=g,
                                                                                        dtype=torch.float64)


@pytest.mark.parametrize(("bits", "group", "block"), [(2, 8, 8), (3, 16, 8), (4, 32, 128)])
def test_gptq_follows_the_obs_update_rule(bits: int, group: int, block: int) -> None:
    x = calibration(32)
    w = torch.randn(32, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hessian = x.T @ x
    ours = gptq_quantize(w, hessian, bits, group, GPTQConfig(block_size=block, damp=0.01))
    assert torch.equal(ours.q.double(), naive_gptq(w, hessian, bits, group, 0.01))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_calibration_outputs(bits: int, act_order: bool) -> None:
    x = calibration(64, tokens=512)
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    error = lambda q: float(((x @ (w - q.dequantize().double())) ** 2).sum())  # noqa: E731
    gptq = gptq_quantize(w, x.T @ x, bits, 16, GPTQConfig(act_order=act_order))
    assert error(gptq) < 0.9 * error(rtn_quantize(w, bits, 16))


@pytest.mark.parametrize("bits", range(1, 9))
def test_packed_storage_round_trips_to_the_fake_quant_values(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(32, 10, generator=g)
    x = torch.randn(40, 32, generator=g)
    for quantized in (rtn_quantize(w, bits, 8), gptq_quantize(w.double(), (x.T @ x).double(), bits, 8)):
        packed = pack(quantized)
        assert packed.bits == (4 if bits <= 4 else 8)
        stored = unpack_int4(packed.qweight) if packed.bits == 4 else packed.qweight
        assert torch.equal(stored[0], quantized.q)
        assert torch.equal(packed.dequantize()[0], quantized.dequantize())  # bit for bit
        fake = quantized.dequantize()
        torch.testing.assert_close(packed_matmul(x, packed), x @ fake, rtol=1e-5, atol=1e-5)


def test_packed_linear_is_a_drop_in_for_the_fake_quant_linear() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 12)
    quantized = rtn_quantize(linear.weight.detach().T, 4, 8)
    fake = torch.nn.Linear(16, 12)
    fake.weight.data, fake.bias.data = quantized.dequantize().T.contiguous(), linear.bias.data.clone()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(PackedLinear(pack(quantized), linear.bias, 4)(x), fake(x), rtol=1e-5, atol=1e-5)


def test_stacked_packing_needs_one_width() -> None:
    a = rtn_quantize(torch.randn(8, 4), 4, 8)
    b = rtn_quantize(torch.randn(8, 4), 3, 8)
    assert pack([a, rtn_quantize(torch.randn(8, 4), 4, 8)]).num_experts == 2
    with pytest.raises(ValueError, match="one bit width"):
        pack([a, b])
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        rtn_quantize(torch.randn(8, 4), 9, 8)
    assert isinstance(a, GroupQuant)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_dequant_matmul_kernel_reads_the_packed_format(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton dequant GEMM (CPU interpreter here) decodes our packing, fractional zeros included."""
    pytest.importorskip("triton")
    from sbmoe.kernels.runtime import can_launch

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(10 + bits)
    quantized = rtn_quantize(torch.randn(32, 24, generator=g), bits, 16)
    packed, x = pack(quantized), torch.randn(10, 32, generator=g)
    assert can_launch(x, aux=(packed.qweight, packed.scale, packed.zero))  # the kernel path, not the fallback
    torch.testing.assert_close(packed_matmul(x, packed), x @ quantized.dequantize(), rtol=1e-4, atol=1e-4)
