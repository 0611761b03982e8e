"""Light encoders: paraphrase-MiniLM-L3-v2 rebuilt from its ONNX export, all-MiniLM-L6-v2 cut to 2 layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize

from sbmoe.models.light_encoders import (
    _bert_tensors,
    _load_state_dict,
    build_minilm_l3,
    build_truncated_minilm,
    minilm_l3_onnx_path,
    minilm_l6_dir,
    onnx_sentence_embeddings,
)

pytestmark = pytest.mark.slow  # real checkpoints (all-MiniLM-L6-v2 and the MiniLM-L3 ONNX export)

# Relative to the repository root: <repo>/../shared/data/scifact/corpus.jsonl
SCIFACT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact" / "corpus.jsonl"
N_DOCS = 16


@pytest.fixture(scope="module")
def scifact_docs() -> list[str]:
    """The first SciFact documents as sentence-transformers sees them: title and text joined."""
    if not SCIFACT_CORPUS.is_file():
        pytest.fail(f"SciFact corpus not found at {SCIFACT_CORPUS}")
    docs = []
    with SCIFACT_CORPUS.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            docs.append((row.get("title", "") + " " + row.get("text", "")).strip())
            if len(docs) == N_DOCS:
                break
    return docs


@pytest.fixture(scope="module")
def minilm_l3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm_l3(tmp_path_factory.mktemp("light") / "paraphrase-MiniLM-L3-v2")


def test_converted_minilm_l3_matches_onnxruntime(minilm_l3: Path, scifact_docs: list[str]) -> None:
    model = SentenceTransformer(str(minilm_l3), device="cpu")
    bert = model[0].auto_model
    assert bert.config.num_hidden_layers == 3 and len(bert.encoder.layer) == 3
    assert (bert.config.hidden_size, bert.config.num_attention_heads, bert.config.intermediate_size) == (384, 12, 1536)
    assert not any(isinstance(module, Normalize) for module in model)
    assert model.max_seq_length == 128

    ours = model.encode(scifact_docs, batch_size=N_DOCS, convert_to_numpy=True)
    reference = onnx_sentence_embeddings(scifact_docs, max_length=128)
    assert ours.shape == reference.shape == (N_DOCS, 384)
    diff = float(np.abs(ours - reference).max())
    print(f"max |sentence-transformers - onnxruntime| = {diff:.3g}")
    assert diff < 1e-5
    # Unnormalised, like the original; and real embeddings, not a degenerate constant.
    norms = np.linalg.norm(ours, axis=1)
    assert np.all(np.abs(norms - 1.0) > 1e-3)
    assert float(np.abs(ours - ours.mean(0)).max()) > 0.1


def test_minilm_l3_folder_is_complete_and_refuses_to_overwrite(minilm_l3: Path) -> None:
    for name in ("modules.json", "config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "README.md"):
        assert (minilm_l3 / name).is_file(), name
    assert (minilm_l3 / "vocab.txt").read_bytes() == (minilm_l6_dir() / "vocab.txt").read_bytes()
    assert not list(minilm_l3.parent.glob(".*")), "temporary build folder left behind"
    with pytest.raises(FileExistsError):
        build_minilm_l3(minilm_l3)


def test_missing_graph_tensor_is_named() -> None:
    import onnx
    from transformers import BertConfig, BertModel

    tensors, prefix = _bert_tensors(onnx.load(str(minilm_l3_onnx_path())).graph)
    assert prefix == "model.0.auto_model."
    assert tensors["encoder.layer.2.output.dense.weight"].shape == (384, 1536)  # transposed from MatMul's (in, out)
    del tensors["encoder.layer.1.attention.self.value.weight"]
    model = BertModel(BertConfig(num_hidden_layers=3, hidden_size=384, num_attention_heads=12, intermediate_size=1536))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.value\.weight"):
        _load_state_dict(model, tensors)


def test_truncated_minilm_keeps_first_layers(tmp_path: Path, scifact_docs: list[str]) -> None:
    dest = build_truncated_minilm(tmp_path / "minilm-l2", layers=2)
    truncated = SentenceTransformer(str(dest), device="cpu")
    full = SentenceTransformer(str(minilm_l6_dir()), device="cpu")

    bert, original = truncated[0].auto_model, full[0].auto_model
    assert len(bert.encoder.layer) == 2 and bert.config.num_hidden_layers == 2
    assert len(original.encoder.layer) == 6
    assert any(isinstance(module, Normalize) for module in truncated)
    assert truncated.max_seq_length == full.max_seq_length

    kept = original.state_dict()
    ours = bert.state_dict()
    assert not [name for name in ours if name.startswith("encoder.layer.") and name.split(".")[2] not in {"0", "1"}]
    for name, tensor in ours.items():
        assert name in kept, name
        assert torch.equal(tensor, kept[name]), name  # layers 0 and 1, embeddings: bit-identical
    assert any(name.startswith("encoder.layer.1.") for name in ours)

    docs = scifact_docs[:8]
    short = truncated.encode(docs, convert_to_numpy=True)
    long = full.encode(docs, convert_to_numpy=True)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(short - long).max()) > 0.05  # not a silent copy of the full model

    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    assert config["truncated_from"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "not a separately trained model" in config["truncation_note"]
    assert "not a separately trained model" in (dest / "README.md").read_text(encoding="utf-8")

    with pytest.raises(ValueError, match="layers"):
        build_truncated_minilm(tmp_path / "too-deep", layers=6)
