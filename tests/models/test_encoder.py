"""Encoders: pooling against a hand computation, parity with SentenceTransformer.encode, aliases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from sbmoe.models.aliases import ModelLoadError
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.fingerprint import model_fingerprint
from sbmoe.models.pipeline import normalizes, pooling_mode

TEXTS = ["a short one", "", "Glucose metabolism in the liver is regulated by insulin and glucagon signalling.",
         "  padded   text  ", "x " * 300]


def manual_pooling(model_dir: Path, texts: list[str], mode: str, max_length: int) -> np.ndarray:
    """Token embeddings from the bare Hugging Face model, one text at a time (no padding), in float64."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).double().eval()
    rows = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            tokens = model(**enc).last_hidden_state[0]
        pooled = {"mean": tokens.mean(0), "cls": tokens[0], "max": tokens.max(0).values}[mode]
        rows.append(pooled.numpy())
    return np.stack(rows)


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_pooling_modes_match_unbatched_float64(tiny_bert_dir: Path, mode: str) -> None:
    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir), pooling=mode, max_length=64))
    assert pooling_mode(model) == mode and not normalizes(model)
    got = encode_texts(model, TEXTS, batch_size=2)
    expected = manual_pooling(tiny_bert_dir, TEXTS, mode, 64)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_normalize_override_gives_unit_vectors(tiny_bert_dir: Path) -> None:
    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    got = encode_texts(model, TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = encode_texts(load_encoder(EncoderConfig(model=str(tiny_bert_dir))), TEXTS)
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_encode_equals_sentence_transformers_on_tiny_model(tiny_encoder: SentenceTransformer) -> None:
    ours = encode_texts(tiny_encoder, TEXTS * 3, batch_size=4)
    theirs = tiny_encoder.encode(TEXTS * 3, batch_size=4)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_real_minilm_honours_its_own_config_and_matches_sentence_transformers(minilm_dir: str) -> None:
    model = load_encoder(EncoderConfig(model="minilm"))
    assert pooling_mode(model) == "mean" and normalizes(model) and model.max_seq_length == 256
    texts = ["Aspirin reduces the risk of heart attack.", "Low-dose aspirin lowers myocardial infarction risk.",
             "The Eiffel tower is in Paris."]
    ours = encode_texts(model, texts)
    reference = SentenceTransformer(minilm_dir, device="cpu").encode(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]  # a real pretrained model, not random weights


def test_overrides_change_the_fingerprint(tiny_bert_dir: Path) -> None:
    base = model_fingerprint(load_encoder(EncoderConfig(model=str(tiny_bert_dir))))
    assert base == model_fingerprint(load_encoder(EncoderConfig(model=str(tiny_bert_dir))))
    assert base != model_fingerprint(load_encoder(EncoderConfig(model=str(tiny_bert_dir), pooling="cls")))
    assert base != model_fingerprint(load_encoder(EncoderConfig(model=str(tiny_bert_dir), max_length=32)))


def test_a_deleted_adapter_gives_the_base_fingerprint_back(tiny_bert_dir: Path) -> None:
    from peft import LoraConfig

    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir), backend="torch"))
    base = model_fingerprint(model)
    before = encode_texts(model, TEXTS[:3], 8)
    auto = model[0].auto_model
    auto.add_adapter(LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False), adapter_name="x")
    auto.set_adapter("x")
    assert model_fingerprint(model) != base  # live adapter weights count
    assert not np.allclose(encode_texts(model, TEXTS[:3], 8), before)
    auto.delete_adapter("x")
    assert any(".base_layer." in name for name in model.state_dict())  # peft's wrappers stay behind
    np.testing.assert_array_equal(encode_texts(model, TEXTS[:3], 8), before)
    assert model_fingerprint(model) == base


def test_hub_alias_offline_fails_with_one_line_listing_offline_models() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_encoder(EncoderConfig(model="tinybert"))
    message = str(info.value)
    assert "tinybert" in message and "huawei-noah/TinyBERT_General_4L_312D" in message
    assert "Available offline: minilm" in message and "\n" not in message


def test_unknown_pooling_is_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown pooling 'avg'"):
        load_encoder(EncoderConfig(model=str(tiny_bert_dir), pooling="avg"))
