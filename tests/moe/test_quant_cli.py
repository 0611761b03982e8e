"""`sbmoe quantize` round trips: an LM folder and an SB-MoE retriever are quantised, saved, reloaded on
their packed weights, and match a fake-quant model built independently in the test."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sbmoe.models.quantize
from sbmoe.cli import app
from sbmoe.lm.data import encode_stream, load_tokenizer, scifact_texts, train_tokenizer
from sbmoe.lm.model import LMConfig, MoELM
from sbmoe.lm.train import load_trained
from sbmoe.models.quantize import load_quantized
from sbmoe.moe.quant import PackedExpertBank, PackedLinear, rtn_quantize

runner = CliRunner()
SMALL = dict(vocab_size=300, seq_len=16, n_layer=2, n_head=2, d_model=32, experts_per_layer=4, expert_hidden=32,
             top_k=2)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny LM saved as `sbmoe lm train` saves one, with a tokenizer for calibration text."""
    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    config = LMConfig(**SMALL)
    train_tokenizer(scifact_texts()[1][:100], 300, folder / "tokenizer.json")
    torch.save({"model": MoELM(config).state_dict(), "config": {"model": asdict(config)}, "history": [],
                "step": 0}, folder / "checkpoint.pt")
    return folder


def invoke(*args: str):
    return runner.invoke(app, ["quantize", *args])


def rtn_reference(model: MoELM, bits: int, group: int) -> MoELM:
    """Fake quantisation written out by hand: every attention projection and expert weight through RTN."""
    with torch.no_grad():
        for block in model.blocks:
            for linear in (block.attn.qkv, block.attn.proj):
                linear.weight.copy_(rtn_quantize(linear.weight.T, bits, group).dequantize().T)
        for param in (model.experts.w_in, model.experts.w_out):
            for e in range(param.shape[0]):
                param[e] = rtn_quantize(param[e], bits, group).dequantize()
    return model.eval()


def test_lm_round_trips_through_packed_storage(lm_dir: Path, tmp_path: Path) -> None:
    result = invoke(str(lm_dir), str(tmp_path / "q"), "--bits", "3", "--group-size", "16")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert report["average_bits"] == 3 and report["blocks"] == 2 * 2 + 8 * 2
    packed = load_quantized(tmp_path / "q")
    assert isinstance(packed.experts, PackedExpertBank) and isinstance(packed.blocks[0].attn.qkv, PackedLinear)
    assert all(block.moe.bank is packed.experts for block in packed.blocks)
    reference = rtn_reference(load_trained(lm_dir).model, 3, 16)
    fake = load_trained(tmp_path / "q").model.eval()
    assert torch.equal(fake.experts.w_in, reference.experts.w_in)
    idx = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(packed(idx)[0], reference(idx)[0], rtol=1e-4, atol=1e-4)
        original = load_trained(lm_dir).model.eval()(idx)[0]
    assert not torch.allclose(original, reference(idx)[0], atol=1e-4)  # quantisation did change the model


def test_lm_gptq_and_mxmoe_write_their_widths(lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gptq = invoke(str(lm_dir), str(tmp_path / "g"), "--bits", "4", "--method", "gptq", "--group-size", "16",
                  "--calib-tokens", "256")
    assert gptq.exit_code == 0, gptq.output
    assert json.loads((tmp_path / "g" / "quantization.json").read_text())["calibration_tokens"] == 256
    # the SciFact corpus was read above; calibrate MxMoE on a small stream to keep the test short
    tokenizer = load_tokenizer(lm_dir / "tokenizer.json")
    stream = encode_stream(tokenizer, scifact_texts()[1][:40])
    monkeypatch.setattr(sbmoe.models.quantize.LMCorpus, "build",
                        classmethod(lambda cls, **kw: cls(stream, stream, {}, 300)))
    result = invoke(str(lm_dir), str(tmp_path / "m"), "--bits", "2.5", "--method", "mxmoe", "--candidates",
                    "2,3,4", "--group-size", "16", "--calib-tokens", "256", "--quantizer", "rtn")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m" / "quantization.json").read_text())
    assert 2.0 < report["average_bits"] <= 2.5 and set(report["bits"].values()) <= {2, 3, 4}
    states = torch.load(tmp_path / "m" / "packed.pt", weights_only=True)
    assert {s["bits"] for s in states.values()} == set(report["bits"].values())
    packed, fake = load_quantized(tmp_path / "m"), load_quantized(tmp_path / "m", packed=False)
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(packed(idx)[0], fake(idx)[0], rtol=1e-4, atol=1e-4)


def test_bad_input_is_one_line(lm_dir: Path, tmp_path: Path) -> None:
    missing = invoke(str(tmp_path / "nothing"), str(tmp_path / "o"))
    assert missing.exit_code == 1 and "no such model folder" in missing.output
    fractional = invoke(str(lm_dir), str(tmp_path / "o"), "--bits", "2.5")
    assert fractional.exit_code == 1 and "whole width" in fractional.output
    assert "Traceback" not in fractional.output and not (tmp_path / "o").exists()


def test_sbmoe_retriever_round_trips(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.pipeline import with_head
    from sbmoe.models.sbmoe_head import SBMoEHead

    torch.manual_seed(5)
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    with_head(base, SBMoEHead(32, num_experts=4)).save(str(tmp_path / "sb"))
    result = invoke(str(tmp_path / "sb"), str(tmp_path / "q"), "--bits", "8", "--method", "gptq", "--group-size",
                    "16", "--calib-data", str(scifact_slice), "--calib-texts", "20")
    assert result.exit_code == 0, result.output
    texts = ["a query about proteins", "cells divide when the gene is expressed"]
    original = load_encoder(EncoderConfig(model=str(tmp_path / "sb"))).encode(texts)
    fake = load_encoder(EncoderConfig(model=str(tmp_path / "q"))).encode(texts)
    packed_model = load_quantized(tmp_path / "q")
    assert any(isinstance(m, PackedLinear) for m in packed_model.modules())
    np.testing.assert_allclose(packed_model.encode(texts), fake, atol=1e-5)
    np.testing.assert_allclose(fake, original, atol=0.05)  # 8 bits stay close to the float model
    assert not np.array_equal(fake, original)
