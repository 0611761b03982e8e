"""An SB-MoE head trained on frozen, cached encoder embeddings: the paper's lr/100 for the encoder taken to 0.

With the encoder frozen, a training step is a few small matrix products on pooled embeddings, so the head
can be trained for the paper's 30 epochs on 10^5 questions in minutes on a CPU. The sentence-transformers
trainer (``sbmoe train --freeze-encoder``) does the same optimisation through its data pipeline, at about a
hundred times the cost per step; this loop is for sweeps (eval/sbmoe_recipe.py). Batches avoid duplicate
queries and documents like the trainer's no-duplicates sampler, so no in-batch negative is a positive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.sbmoe_head import SBMoEHead


@dataclass
class HeadTrainConfig:
    """The paper's recipe for the head: AdamW (weight decay 0.01) at lr 1e-4, constant, batch 64,
    30 epochs, in-batch negatives, temperature 1 over dot products. ``normalize`` scores the head's outputs
    by cosine instead (a model that declares cosine is searched that way; pair it with a temperature ~0.05)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 30
    temperature: float = 1.0
    seed: int = 0
    head_side: str = "both"  # both: one head for queries and documents; query: documents stay as encoded
    normalize: bool = False


def no_duplicate_batches(query_rows: np.ndarray, doc_rows: np.ndarray, batch_size: int,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """A seeded shuffle of the pairs cut into batches in which no query and no document occurs twice; a pair
    that would repeat one waits for the next batch (first in line there)."""
    queue = deque(rng.permutation(len(query_rows)).tolist())
    batches = []
    while queue:
        batch, queries, docs, waiting = [], set(), set(), []
        while queue and len(batch) < batch_size:
            pair = queue.popleft()
            q, d = int(query_rows[pair]), int(doc_rows[pair])
            if q in queries or d in docs:
                waiting.append(pair)
                continue
            batch.append(pair)
            queries.add(q)
            docs.add(d)
        queue.extendleft(reversed(waiting))
        batches.append(np.asarray(batch, dtype=np.int64))
    return batches


def apply_head(head: SBMoEHead, embeddings: Tensor, mode: str | None = None) -> Tensor:
    return head({"sentence_embedding": embeddings}, mode=mode)["sentence_embedding"]


def step_loss(head: SBMoEHead, queries: Tensor, docs: Tensor, config: HeadTrainConfig) -> Tensor:
    """In-batch ranking loss (query i's positive is document i) plus the head's auxiliary loss."""
    q = apply_head(head, queries)
    d = apply_head(head, docs) if config.head_side == "both" else docs
    if config.normalize:
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    loss = F.cross_entropy(q @ d.T / config.temperature, torch.arange(len(q)))
    aux = head.pop_aux_loss()
    return loss if aux is None else loss + aux


def train_head(head: SBMoEHead, query_embeddings: Tensor, doc_embeddings: Tensor, pairs: np.ndarray,
               config: HeadTrainConfig, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``head`` in place on (query row, document row) ``pairs``; returns the mean loss of each epoch.
    ``on_epoch(epoch, mean_loss)`` runs after each epoch (e.g. a dev evaluation: the head is in eval mode
    there and back in training mode after)."""
    if config.head_side not in ("both", "query"):
        raise ValueError(f"unknown head side {config.head_side!r}; choose both or query")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    losses = []
    for epoch in range(1, config.epochs + 1):
        head.train()
        total, steps = 0.0, 0
        for batch in no_duplicate_batches(pairs[:, 0], pairs[:, 1], config.batch_size, rng):
            if len(batch) < 2:  # a lone pair has no in-batch negative
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(head, query_embeddings[pairs[batch, 0]], doc_embeddings[pairs[batch, 1]], config)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
        if on_epoch is not None:
            head.eval()
            with torch.no_grad():
                on_epoch(epoch, losses[-1])
    head.eval()
    return losses


def parameter_shift(before: dict[str, Tensor], module: nn.Module) -> dict[str, float]:
    """||p - p_before|| / ||p_before|| per parameter group (router, experts): a head that did not move is a defect."""
    now = dict(module.named_parameters())
    shift = {}
    for group in ("router", "experts"):
        names = [n for n in before if n.startswith(group)]
        if names:
            old = torch.cat([before[n].flatten() for n in names])
            new = torch.cat([now[n].detach().flatten() for n in names])
            shift[group] = float((new - old).norm() / old.norm())
    return shift
