"""The opt-in ``torch-bf16`` backend: the Transformer in bfloat16, pooling after it in float32; embeddings within
bf16's rounding of a float64 reference, told apart from fp32 ones in cache keys and provenance, and refused on a
CPU without bf16 instructions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.models import bf16
from sbmoe.models.aliases import ModelLoadError
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.fingerprint import model_fingerprint
from sbmoe.models.onnx_backend import backend_of

needs_bf16 = pytest.mark.skipif(not bf16.cpu_has_bf16(), reason="this CPU has no bf16 instructions")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_bf16
def test_bf16_embeddings_stay_within_its_rounding_of_a_float64_reference(minilm_dir: str,
                                                                          scifact_slice: Path) -> None:
    texts = [doc.as_text() for doc in BeirDataset.open(str(scifact_slice)).iter_corpus()][:24]
    fp32 = load_encoder(EncoderConfig(model=minilm_dir, backend="torch"))
    reference = copy.deepcopy(fp32).to(torch.float64)  # the same model in float64: the independent reference
    with torch.inference_mode():
        exact = reference.encode(texts, batch_size=8, convert_to_numpy=True)
    model = load_encoder(EncoderConfig(model=minilm_dir, backend="torch-bf16"))
    assert backend_of(model) == "torch-bf16" and backend_of(fp32) == "torch"
    assert {p.dtype for p in model[0].parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for m in list(model)[1:] for p in m.parameters())
    features = model[0].preprocess(texts[:2])
    with torch.inference_mode():
        assert model[0](features)["token_embeddings"].dtype == torch.float32  # pooling gets fp32 back

    half = encode_texts(model, texts, batch_size=8)
    full = encode_texts(fp32, texts, batch_size=8)
    assert half.dtype == np.float32
    assert 1 - cosines(full, exact).min() < 1e-6
    drift = 1 - cosines(half, exact)
    assert drift.max() < 1e-3, drift.max()  # bf16 keeps 8 bits of mantissa: ~5e-5 after six layers
    assert drift.mean() > 1e-6, drift.mean()  # and the arm is not fp32 in disguise
    # what retrieval sees: each text's nearest other text is the same under bf16 as in float64
    def nearest(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)
        return scores.argmax(1)

    assert (nearest(half) == nearest(exact)).mean() >= 0.9
    assert model_fingerprint(model) != model_fingerprint(fp32)  # separate embedding-cache entries and indexes


def test_bf16_is_refused_on_a_cpu_without_bf16_instructions(tiny_bert_dir: Path, scifact_slice: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: False)
    with pytest.raises(ModelLoadError, match="needs a CPU with bf16 instructions"):
        load_encoder(EncoderConfig(model=str(tiny_bert_dir), backend="torch-bf16"))
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_bert_dir), "--datasets", str(scifact_slice),
                                      "--backend", "torch-bf16", "--no-cache"])
    assert result.exit_code != 0
    assert "needs a CPU with bf16 instructions" in result.output and "Traceback" not in result.output
