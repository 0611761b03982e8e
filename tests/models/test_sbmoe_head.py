"""Router, expert bank and SB-MoE head against a naive per-sample loop in float64; aux loss by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.pipeline import with_head
from sbmoe.models.sbmoe_head import GATES, TRAINABLE_GATES, SBMoEHead
from sbmoe.moe.experts import ExpertBank
from sbmoe.moe.router import NoisyTopKRouter, router_z_loss, switch_load_balancing_loss

DIM, EXPERTS, N = 12, 5, 9


def naive_head(head: SBMoEHead, x: torch.Tensor, rule: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The head's maths written out one sample and one expert at a time.

    ``rule``: ``top1`` (weight p_best), ``hard`` (weight 1 on the best expert) or ``all`` (every p_e);
    the paper's gate normalises the weighted sum, the others weight each normalised expert output.
    """
    gate = head.router.gate
    outside = head.gate != "paper"
    outputs = []
    for n in range(x.shape[0]):
        v = x[n]
        g = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5) if head.router_norm else v  # LayerNorm
        logits = gate[2](torch.relu(gate[0](g)))
        if noise is not None:
            logits = logits + noise[n] * F.softplus(head.router.noise(g))
        probs = torch.softmax(logits, dim=-1)
        best = int(torch.argmax(probs))
        if rule == "all":
            weights = [probs[e] for e in range(EXPERTS)]
        else:
            top = probs[best] if rule == "top1" else 1.0
            weights = [top if e == best else 0.0 for e in range(EXPERTS)]
        experts = [head.experts.expert(e, v) for e in range(EXPERTS)]
        if outside:
            mixed = sum(weights[e] * experts[e] / experts[e].norm() for e in range(EXPERTS))
        else:
            mixed = sum(weights[e] * experts[e] for e in range(EXPERTS))
            mixed = mixed / mixed.norm()
        outputs.append(mixed + v)
    return torch.stack(outputs)


def make_head(gate: str, experts: int = EXPERTS, seed: int = 0) -> SBMoEHead:
    torch.manual_seed(seed)
    return SBMoEHead(DIM, experts, gate=gate).double()


@pytest.fixture
def head() -> SBMoEHead:
    return make_head("paper")


# inference rule of top-1 for each gate: the weight the gate was trained to give one expert
TOP1_RULE = {"paper": "top1", "scaled": "top1", "dense": "top1", "straight_through": "hard", "gumbel": "hard"}


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("mode", ["top1", "all"])
def test_head_inference_equals_naive_loop(gate: str, mode: str) -> None:
    head = make_head(gate)
    head.mode = mode
    head.eval()
    x = torch.randn(N, DIM, dtype=torch.float64)
    got = head({"sentence_embedding": x.clone()})["sentence_embedding"]
    expected = naive_head(head, x, "all" if mode == "all" else TOP1_RULE[gate])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("gate", "rule"), [("paper", "top1"), ("scaled", "top1"), ("dense", "all"),
                                            ("straight_through", "hard")])
def test_head_training_equals_naive_loop(gate: str, rule: str) -> None:
    head = make_head(gate)
    head.mode = "all"  # training routes by the gate's rule whatever the inference mode
    head.train()
    x = torch.randn(N, DIM, dtype=torch.float64)
    torch.manual_seed(7)
    got = head({"sentence_embedding": x.clone()})["sentence_embedding"]
    torch.manual_seed(7)
    noise = torch.randn(N, EXPERTS, dtype=torch.float64)  # the same draw randn_like makes
    torch.testing.assert_close(got, naive_head(head, x, rule, noise), rtol=1e-10, atol=1e-10)


def router_gradients(head: SBMoEHead, x: torch.Tensor) -> dict[str, float]:
    """Gradient norm of every router parameter after one backward pass of a loss on the head's output."""
    head.train()
    head.zero_grad()
    out = head({"sentence_embedding": x})["sentence_embedding"]
    target = torch.randn_like(out)
    ((out - target) ** 2).sum().backward()
    return {name: 0.0 if p.grad is None else float(p.grad.norm()) for name, p in head.router.named_parameters()}


@pytest.mark.parametrize("gate", TRAINABLE_GATES)
def test_every_router_parameter_of_a_trainable_gate_gets_a_gradient(gate: str) -> None:
    torch.manual_seed(3)
    grads = router_gradients(make_head(gate), torch.randn(32, DIM, dtype=torch.float64))
    assert len(grads) == 6  # gate: two Linear layers; noise: one Linear
    assert all(g > 1e-6 for g in grads.values()), grads


def test_paper_gate_router_gets_no_gradient() -> None:
    """The paper's top-1 formulation: normalize(w_i E_i(x)) divides w_i back out (float64 rounding only)."""
    torch.manual_seed(3)
    grads = router_gradients(make_head("paper"), torch.randn(32, DIM, dtype=torch.float64))
    assert all(g < 1e-9 for g in grads.values()), grads


def test_gumbel_training_is_hard_one_expert_per_input() -> None:
    head = make_head("gumbel")
    head.train()
    routed = head.router(torch.randn(64, DIM, dtype=torch.float64), mode=head.routing_mode())
    torch.testing.assert_close(routed.weights.sum(1), torch.ones(64, dtype=torch.float64))
    assert ((routed.weights > 0).sum(1) == 1).all()


def test_frozen_router_and_single_expert_are_real_controls() -> None:
    """E = 1: every input takes the one expert at weight 1 (an adapter without routing)."""
    single = make_head("scaled", experts=1)
    single.eval()
    x = torch.randn(N, DIM, dtype=torch.float64)
    out = single({"sentence_embedding": x.clone()})["sentence_embedding"]
    e = single.experts.expert(0, x)
    torch.testing.assert_close(out, x + e / e.norm(dim=-1, keepdim=True))


def test_random_mode_uses_exactly_one_expert_with_weight_one(head: SBMoEHead) -> None:
    head.mode = "random"
    head.eval()
    routed = head.router(torch.randn(200, DIM, dtype=torch.float64), mode=head.routing_mode())
    assert torch.equal(routed.weights.sum(1), torch.ones(200, dtype=torch.float64))
    assert ((routed.weights > 0).sum(1) == 1).all()
    assert len(torch.unique(routed.indices)) == EXPERTS  # all experts drawn over 200 samples
    assert head.router.mode == "top1"  # the call's mode is an argument; the router is not changed


def test_topk_renormalized_router_equals_loop() -> None:
    torch.manual_seed(1)
    router = NoisyTopKRouter(DIM, EXPERTS, mode="topk", top_k=2, renormalize=True).double()
    x = torch.randn(N, DIM, dtype=torch.float64)
    out = router(x)
    for n in range(N):
        probs = torch.softmax(router.gate(x[n]), -1).detach()
        top = sorted(range(EXPERTS), key=lambda e: -float(probs[e]))[:2]
        for e in range(EXPERTS):
            expected = probs[e] / (probs[top[0]] + probs[top[1]]) if e in top else 0.0
            assert float(out.weights[n, e].detach()) == pytest.approx(float(expected), abs=1e-12)


def test_candidate_mask_hides_experts() -> None:
    router = NoisyTopKRouter(DIM, EXPERTS, mode="all").double()
    mask = torch.tensor([True, False, True, False, False])
    out = router(torch.randn(N, DIM, dtype=torch.float64), candidate_mask=mask)
    assert torch.all(out.weights[:, ~mask] == 0)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(N, dtype=torch.float64))


def test_switch_loss_and_z_loss_equal_hand_computation() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    indices = torch.tensor([[0], [1], [0], [2]])
    # f = (2/4, 1/4, 1/4); P = column means (0.375, 0.3125, 0.3125)
    expected = 3 * (0.5 * 0.375 + 0.25 * 0.3125 + 0.25 * 0.3125)
    assert float(switch_load_balancing_loss(probs, indices, 3)) == pytest.approx(expected, abs=1e-7)
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    z = [math.log(math.exp(0) + math.exp(1)) ** 2, math.log(math.exp(2) + math.exp(-1)) ** 2]
    assert float(router_z_loss(logits)) == pytest.approx(sum(z) / 2, abs=1e-6)


def test_usage_counters_read_and_reset() -> None:
    router = NoisyTopKRouter(DIM, EXPERTS, mode="top1")
    out = router(torch.randn(40, DIM))
    expected = torch.bincount(out.indices.reshape(-1), minlength=EXPERTS).double() / 40
    torch.testing.assert_close(router.usage(), expected)
    p = expected[expected > 0]
    assert router.usage_entropy() == pytest.approx(float(-(p * p.log()).sum()))
    router.reset_usage()
    assert router.usage_counts.sum() == 0 and router.usage_entropy() == pytest.approx(math.log(EXPERTS))
    router.usage_counts[1] = 7  # every slot on one expert
    assert router.usage_entropy() == 0.0 and math.copysign(1.0, router.usage_entropy()) == 1.0


def test_expert_bank_equals_per_expert_loop_with_gradients() -> None:
    torch.manual_seed(2)
    bank = ExpertBank(EXPERTS, DIM, 6).double()
    x = torch.randn(N, DIM, dtype=torch.float64, requires_grad=True)
    weights = torch.softmax(torch.randn(N, EXPERTS, dtype=torch.float64), -1)
    batched = bank(x, weights)
    looped = sum(weights[:, e:e + 1] * bank.expert(e, x) for e in range(EXPERTS))
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(batched.sum(), [x, bank.w1])
    g2 = torch.autograd.grad(looped.sum(), [x, bank.w1])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_saved_model_loads_in_sentence_transformers_with_same_embeddings(tiny_bert_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    model = with_head(base, SBMoEHead(32, num_experts=4, mode="all"))
    model.eval()
    texts = ["one query", "a longer document about proteins and cells", ""]
    ours = encode_texts(model, texts)
    model.save(str(tmp_path / "m"))
    # sentence-transformers >= 6 imports modules outside its namespace only with trust_remote_code=True
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(tmp_path / "m"), device="cpu")
    loaded = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "SBMoEHead", "Normalize"]
    np.testing.assert_allclose(loaded.encode(texts), ours, atol=1e-6)
    via_sbmoe = load_encoder(EncoderConfig(model=str(tmp_path / "m")))  # sbmoe trusts its own head
    np.testing.assert_allclose(encode_texts(via_sbmoe, texts), ours, atol=1e-6)


def test_pooled_cache_serves_every_head_mode_with_one_encoder_pass(tiny_bert_dir: Path, scifact_slice: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sbmoe.data import BeirDataset
    from sbmoe.evaluation.systems import dense_system
    from sbmoe.index import retriever as retriever_module
    from sbmoe.models import encoding as encoding_module

    torch.manual_seed(4)
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    model = with_head(base, SBMoEHead(32, num_experts=4))
    model.eval()
    dataset = BeirDataset.open(str(scifact_slice))
    queries = dataset.load_split("test")[0]
    config = EncoderConfig(model="tiny", batch_size=16)
    plain = dense_system(config, use_cache=False, show_progress=False, model=model)
    pooled = dense_system(config, show_progress=False, model=model, cache_pooled=True)
    calls = []
    original = retriever_module.encode_texts
    for module in (retriever_module, encoding_module):  # queries, corpus
        monkeypatch.setattr(module, "encode_texts", lambda *a, **k: calls.append(1) or original(*a, **k))
    for mode in ("top1", "all"):
        model[2].mode = mode
        expected, got = plain(dataset, queries, 10), pooled(dataset, queries, 10)
        assert list(got) == list(expected)
        for qid in expected:
            assert list(got[qid]) == list(expected[qid])
            np.testing.assert_allclose(list(got[qid].values()), list(expected[qid].values()), atol=1e-5)
    # plain: corpus + queries per mode; pooled: the corpus once (then cached), queries per mode
    assert len(calls) == 2 + 2 + 1 + 2
