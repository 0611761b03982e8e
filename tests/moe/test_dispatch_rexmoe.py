"""Sort-based dispatch vs a per-token loop in float64; ReXMoE pools, PSR schedule, parameters, pool loss."""

from __future__ import annotations

import pytest
import torch

from sbmoe.moe.dispatch import activation, align_by_expert, masked_loop_dispatch, moe_dispatch
from sbmoe.moe.moe_layer import ExpertFFNBank, MoEFeedForward
from sbmoe.moe.rexmoe import layer_candidates, pool_balance_loss, psr_mask, psr_visible_share
from sbmoe.moe.router import switch_load_balancing_loss


def per_token_reference(x, indices, weights, w_in, w_out, kind):
    rows = []
    for n in range(x.shape[0]):
        total = torch.zeros(x.shape[1], dtype=x.dtype)
        for j in range(indices.shape[1]):
            e = int(indices[n, j])
            total = total + weights[n, j] * (activation(x[n] @ w_in[e], kind) @ w_out[e])
        rows.append(total)
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_dispatch_equals_per_token_loop_with_gradients(kind: str, top_k: int) -> None:
    torch.manual_seed(top_k)
    tokens, dim, hidden, experts = 13, 6, 5, 7
    h_in = 2 * hidden if kind == "swiglu" else hidden
    x = torch.randn(tokens, dim, dtype=torch.float64, requires_grad=True)
    w_in = torch.randn(experts, dim, h_in, dtype=torch.float64, requires_grad=True)
    w_out = torch.randn(experts, hidden, dim, dtype=torch.float64, requires_grad=True)
    indices = torch.stack([torch.randperm(4)[:top_k] for _ in range(tokens)])  # experts 4..6 stay empty
    weights = torch.rand(tokens, top_k, dtype=torch.float64, requires_grad=True)
    got = moe_dispatch(x, indices, weights, w_in, w_out, kind)
    expected = per_token_reference(x, indices, weights, w_in, w_out, kind)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(masked_loop_dispatch(x, indices, weights, w_in, w_out, kind), expected,
                               rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad((got * upstream).sum(), [x, w_in, w_out, weights])
    reference = torch.autograd.grad((expected * upstream).sum(), [x, w_in, w_out, weights])
    for a, b in zip(grads, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.all(grads[1][4:] == 0)  # empty experts get no gradient


def test_alignment_is_exact() -> None:
    indices = torch.tensor([[2, 0], [0, 3], [2, 0]])
    aligned = align_by_expert(indices, 5)
    assert aligned.offsets.tolist() == [0, 3, 3, 5, 6, 6]
    assert aligned.order.tolist() == [1, 2, 5, 0, 4, 3]
    assert aligned.tokens.tolist() == [0, 1, 2, 0, 2, 1]


def test_pools_group_and_sliding() -> None:
    assert layer_candidates(1, 4, 2, 1, "local") == [2, 3]
    assert layer_candidates(1, 4, 2, 2, "group") == [2, 3, 0, 1]  # own experts first
    assert layer_candidates(2, 4, 2, 2, "group") == [4, 5, 6, 7]
    assert layer_candidates(0, 4, 1, 3, "sliding") == [0, 1, 2]  # window clamped at the edge
    assert layer_candidates(2, 4, 1, 3, "sliding") == [2, 1, 3]
    assert layer_candidates(3, 4, 1, 4, "group") == [3, 2, 1, 0]


def test_psr_schedules() -> None:
    assert psr_visible_share(0.0, 0.5, "linear", 4) == 0.0
    assert psr_visible_share(0.25, 0.5, "linear", 4) == 0.5
    assert psr_visible_share(0.9, 0.5, "linear", 4) == 1.0
    assert [psr_visible_share(p, 0.6, "step", 4) for p in (0.1, 0.2, 0.4, 0.59, 0.6)] == [0.0, 1 / 3, 2 / 3,
                                                                                          2 / 3, 1.0]
    assert psr_visible_share(0.0, 0.5, "none", 4) == 1.0
    assert psr_mask(2, 8, 0.25, 0.5, "linear", 4).tolist() == [True] * 5 + [False] * 3


def build_layers(num_layers: int, experts: int, reuse: int, mode: str) -> tuple[ExpertFFNBank, list]:
    bank = ExpertFFNBank(num_layers * experts, 8, 4)
    layers = [MoEFeedForward(bank, layer_candidates(ly, num_layers, experts, reuse, mode),
                             list(range(ly * experts, (ly + 1) * experts)), top_k=2) for ly in range(num_layers)]
    return bank, layers


def test_rexmoe_has_the_baselines_expert_parameters() -> None:
    def expert_params(layers: list) -> int:
        seen = {id(p): p for layer in layers for name, p in layer.named_parameters() if name.startswith("bank.")}
        return sum(p.numel() for p in seen.values())

    _, local = build_layers(4, 4, 1, "local")
    _, shared = build_layers(4, 4, 2, "group")
    assert expert_params(local) == expert_params(shared) == 16 * (8 * 8 + 4 * 8)
    x = torch.randn(2, 5, 8)
    for layer in shared:  # active experts per token: top-2 of equal size, as in the baseline
        layer(x)
        assert layer.last_routing.indices.shape == (10, 2)


def test_pool_loss_counts_routing_over_the_whole_pool() -> None:
    torch.manual_seed(0)
    _, layers = build_layers(2, 2, 2, "group")  # one pool of 4 experts shared by both layers
    for layer in layers:
        layer(torch.randn(1, 6, 8))
    loss = pool_balance_loss(layers, 4)
    # by hand: map each layer's candidate columns to global experts 0..3, concatenate, Switch loss
    probs, chosen = [], []
    for layer in layers:
        routed, ids = layer.last_routing, layer.candidates
        pooled = torch.zeros(routed.probs.shape[0], 4)
        pooled[:, ids] = routed.probs
        probs.append(pooled)
        chosen.append(ids[routed.indices])
    probs, chosen = torch.cat(probs), torch.cat(chosen)
    fraction = torch.bincount(chosen.reshape(-1), minlength=4).float() / chosen.numel()
    assert float(loss) == pytest.approx(float(4 * (fraction * probs.mean(0)).sum()), abs=1e-6)
    _, local = build_layers(2, 2, 1, "local")
    for layer in local:
        layer(torch.randn(1, 6, 8))
    per_layer = [switch_load_balancing_loss(ly.last_routing.probs, ly.last_routing.indices, 2) for ly in local]
    assert float(pool_balance_loss(local, 4)) == pytest.approx(float(sum(per_layer) / 2), abs=1e-6)


def test_psr_mask_keeps_routing_local() -> None:
    _, layers = build_layers(2, 2, 2, "group")
    layer = layers[1]
    layer(torch.randn(3, 4, 8), candidate_mask=psr_mask(2, 4, 0.0, 0.5, "linear", 2))
    assert layer.stats().non_local_share == 0.0
    assert set(layer.candidates[layer.last_routing.indices].reshape(-1).tolist()) <= {2, 3}


def test_distinct_combinations_count_sorted_topk_tuples_like_a_set() -> None:
    """The routing statistic counts distinct sorted top-k tuples seen since the reset (naive: a set of tuples)."""
    torch.manual_seed(0)
    layer = MoEFeedForward(ExpertFFNBank(8, 6, 4), candidates=list(range(8)), local=list(range(8)), top_k=3)
    seen: set[tuple[int, ...]] = set()
    for _ in range(3):
        layer(torch.randn(2, 7, 6))
        seen |= {tuple(sorted(row)) for row in layer.last_routing.indices.tolist()}
    assert layer.stats().distinct_combinations == len(seen) > 1
