"""Head training on cached embeddings: duplicate-free batches, the loss against a float64 loop, what learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbmoe.models.sbmoe_head import SBMoEHead
from sbmoe.training.embedding_head import (
    HeadTrainConfig,
    apply_head,
    no_duplicate_batches,
    parameter_shift,
    step_loss,
    train_head,
)


def test_batches_cover_every_pair_once_without_duplicates() -> None:
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 40, 300)  # many pairs share a query or a document
    docs = rng.integers(0, 25, 300)
    batches = no_duplicate_batches(queries, docs, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    for batch in batches:
        assert len(batch) <= 16
        assert len(set(queries[batch])) == len(batch) and len(set(docs[batch])) == len(batch)


@pytest.mark.parametrize("normalize", [False, True])
def test_step_loss_equals_a_float64_loop(normalize: bool) -> None:
    torch.manual_seed(0)
    head = SBMoEHead(8, 3, gate="dense", noisy=False).eval()  # deterministic routing for the reference
    queries, docs = torch.randn(5, 8), torch.randn(5, 8)
    temperature = 0.05 if normalize else 0.5
    config = HeadTrainConfig(temperature=temperature, normalize=normalize)
    loss = step_loss(head, queries, docs, config)
    with torch.no_grad():
        q = apply_head(head, queries).double()
        d = apply_head(head, docs).double()
    reference = 0.0
    for i in range(5):
        scores = []
        for j in range(5):
            dot = float(q[i] @ d[j])
            if normalize:
                dot /= math.sqrt(float(q[i] @ q[i]) * float(d[j] @ d[j]))
            scores.append(dot / temperature)
        reference += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    assert loss.item() == pytest.approx(reference / 5, rel=1e-5)


def synthetic(n: int = 256, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Queries are noisy copies of their documents: a head can only help by keeping that signal."""
    g = torch.Generator().manual_seed(0)
    docs = torch.randn(n, dim, generator=g)
    queries = docs + 0.8 * torch.randn(n, dim, generator=g)
    return queries, docs, np.stack([np.arange(n), np.arange(n)], axis=1)


@pytest.mark.parametrize("gate", ["paper", "gumbel"])
def test_training_moves_what_can_learn(gate: str) -> None:
    queries, docs, pairs = synthetic()
    torch.manual_seed(0)
    head = SBMoEHead(16, 4, gate=gate)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    epochs: list[int] = []
    losses = train_head(head, queries, docs, pairs, HeadTrainConfig(lr=3e-3, weight_decay=0.0, epochs=4, seed=0,
                                                                    batch_size=32),
                        on_epoch=lambda epoch, loss: epochs.append(epoch))
    assert epochs == [1, 2, 3, 4] and losses[-1] < losses[0]
    shift = parameter_shift(before, head)
    assert shift["experts"] > 1e-3
    head.zero_grad(set_to_none=True)
    head.train()
    step_loss(head, queries[:32], docs[:32], HeadTrainConfig()).backward()
    router = max(float(p.grad.abs().max()) for p in head.router.parameters())
    experts = max(float(p.grad.abs().max()) for p in head.experts.parameters())
    if gate == "paper":  # top-1 under the paper's normalisation: the weight cancels, the router's gradient is
        assert router < 1e-5 * experts  # rounding error only (Adam still turns it into small steps)
    else:
        assert router > 1e-3 * experts and shift["router"] > 1e-3


def test_query_side_training_leaves_documents_and_rejects_unknown_side() -> None:
    queries, docs, pairs = synthetic(64)
    head = SBMoEHead(16, 2, gate="scaled")
    train_head(head, queries, docs, pairs, HeadTrainConfig(epochs=1, head_side="query", batch_size=16))
    with pytest.raises(ValueError, match="unknown head side"):
        train_head(head, queries, docs, pairs, HeadTrainConfig(head_side="document"))
