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


def test_bf16_step_is_the_fp32_step_rounded(no_dropout_bert: Path) -> None:
    """bf16 runs the encoder in bfloat16 (its gradients differ from fp32's, so autocast is on) but stays
    within bfloat16 rounding of the fp32 step; pooled embeddings, head and loss are float32, the attention
    is eager during the step on CPU and the model's own afterwards."""
    encoder = SentenceTransformer(modules=[Transformer(str(no_dropout_bert), max_seq_length=64), Pooling(32)])
    torch.manual_seed(0)
    model = with_head(encoder, make_heads(TrainConfig(moe="top1", gate="scaled", experts=4), 32))
    model.train()
    features = batch(model, 3)
    fp32_loss, fp32_grads = step(ranking_loss(model, temperature=0.5), model, features)
    cached = CachedRankingLoss(model, temperature=0.5, micro_batch_tokens=60, precision="bf16")
    hf = cached.encoder[0].model
    own = hf.config._attn_implementation
    seen: dict[str, list] = {"encoder": [], "pooling": []}

    def spy(module: torch.nn.Module, key: str) -> None:
        original = module.forward

        def forward(feature: dict, **kwargs):
            out = original(feature, **kwargs)
            seen[key].append((hf.config._attn_implementation, torch.is_autocast_enabled("cpu"),
                              (feature if key == "pooling" else out)["token_embeddings"].dtype))
            return out

        module.forward = forward

    spy(cached.encoder[0], "encoder")
    spy(cached.prefix[-1], "pooling")
    bf16_loss, bf16_grads = step(cached, model, features)

    assert own != "eager" and hf.config._attn_implementation == own
    assert len(seen["encoder"]) > 2 and all(entry[:2] == ("eager", True) for entry in seen["encoder"])
    assert all(entry == (own, False, torch.float32) for entry in seen["pooling"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2)
    assert set(bf16_grads) == set(fp32_grads)
    encoder_names = [n for n in fp32_grads if n.startswith("0.")]
    assert any(not torch.equal(bf16_grads[n], fp32_grads[n]) for n in encoder_names)
    for name, grad in fp32_grads.items():
        if grad.norm() > 1e-6:
            cosine = torch.nn.functional.cosine_similarity(bf16_grads[name].flatten(), grad.flatten(), dim=0)
            assert cosine > 0.98, name


def test_bf16_needs_the_micro_batched_step() -> None:
    with pytest.raises(ValueError, match="--precision bf16"):
        TrainConfig(precision="bf16", micro_batch_tokens=0).validate()
    with pytest.raises(ValueError, match="--precision bf16"):
        TrainConfig(precision="bf16", freeze_encoder=True).validate()
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="fp16").validate()
