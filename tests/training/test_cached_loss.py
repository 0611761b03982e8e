"""The length-sorted micro-batch step equals the plain full-batch step: loss and every gradient."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from sbmoe.models.pipeline import with_head
from sbmoe.training.cached_loss import CachedRankingLoss
from sbmoe.training.config import TrainConfig
from sbmoe.training.losses import ranking_loss
from sbmoe.training.trainer import make_heads

WORDS = ["protein", "cell", "gene", "virus", "cancer", "brain", "heart", "lung", "liver", "blood", "bone", "skin",
         "drug", "dose", "trial", "mouse"]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: str) -> Path:
    """A tiny random BERT without dropout, so the two steps see the same network."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    out = tmp_path_factory.mktemp("bert-no-dropout")
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def batch(model: SentenceTransformer, columns: int, rows: int = 12) -> list[dict]:
    """Columns of texts whose lengths vary from 2 to 40 words (each padded to its column's longest)."""
    rng = random.Random(0)
    out = []
    for _ in range(columns):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, 40))) for _ in range(rows)]
        out.append(dict(model.preprocess(texts)))
    return out


def step(loss_fn: torch.nn.Module, model: SentenceTransformer, features: list[dict]) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the router's noise
    loss = loss_fn([dict(f) for f in features], None)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("head", "columns"), [("none", 3), ("scaled", 3), ("scaled", 2), ("query", 3)])
def test_micro_batched_step_equals_plain_step(no_dropout_bert: Path, head: str, columns: int) -> None:
    encoder = SentenceTransformer(modules=[Transformer(str(no_dropout_bert), max_seq_length=64), Pooling(32)])
    torch.manual_seed(0)
    config = TrainConfig(moe="none" if head == "none" else "top1", gate="scaled", experts=4, aux_loss_weight=0.1,
                         head_side="query" if head == "query" else "both")
    model = with_head(encoder, make_heads(config, 32))
    model.train()
    features = batch(model, columns)
    if head == "query":
        for feature, task in zip(features, ["query", "document", "document"], strict=True):
            feature["task"] = task
    plain_loss, plain_grads = step(ranking_loss(model, temperature=0.5), model, features)
    cached = CachedRankingLoss(model, temperature=0.5, micro_batch_tokens=60)
    cached_loss, cached_grads = step(cached, model, features)

    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert set(cached_grads) == set(plain_grads)
    assert any("router" in name for name in plain_grads) == (head != "none")
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_micro_batches_follow_lengths(no_dropout_bert: Path) -> None:
    """Each micro-batch is cut to its own longest text: far fewer tokens are encoded than the padded batch."""
    encoder = SentenceTransformer(modules=[Transformer(str(no_dropout_bert), max_seq_length=64), Pooling(32)])
    features = batch(encoder, 2, rows=32)
    shapes: list[tuple[int, int]] = []
    cached = CachedRankingLoss(encoder, temperature=1.0, micro_batch_tokens=80)
    transformer = cached.prefix[0]
    original = transformer.forward

    def spy(feature: dict, **kwargs):
        shapes.append(tuple(feature["input_ids"].shape))
        return original(feature, **kwargs)

    transformer.forward = spy
    with torch.no_grad():
        cached([dict(f) for f in features], None)
    encoded = sum(rows * width for rows, width in shapes)
    real = sum(int(f["attention_mask"].sum()) for f in features)
    padded = sum(f["input_ids"].numel() for f in features)
    assert len(shapes) > 2 and sum(rows for rows, _ in shapes) == 64
    assert real <= encoded < 0.8 * padded


def test_bad_micro_batch_size(no_dropout_bert: Path) -> None:
    encoder = SentenceTransformer(modules=[Transformer(str(no_dropout_bert)), Pooling(32)])
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        CachedRankingLoss(encoder, 1.0, micro_batch_tokens=0)
