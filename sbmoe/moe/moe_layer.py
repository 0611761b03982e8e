"""Token-level MoE feed-forward layer for language models, over an expert bank that layers may share.

Each layer routes its tokens with a ``NoisyTopKRouter`` (linear gate, top-k, optional renormalisation)
over a list of candidate experts, which are rows of an ``ExpertFFNBank``. A layer-local MoE's candidates
are its own experts; under ReXMoE (``rexmoe.py``) the candidates include adjacent layers' experts from the
same bank. Dispatch is sort-based (``dispatch.moe_dispatch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dispatch import moe_dispatch
from .router import NoisyTopKRouter, RouterOutput


class ExpertFFNBank(nn.Module):
    """E expert FFNs as stacked weights: w_in (E, d, h_in) and w_out (E, h, d), h_in = 2h for SwiGLU."""

    def __init__(self, num_experts: int, dim: int, hidden: int, kind: str = "swiglu") -> None:
        super().__init__()
        if kind not in ("swiglu", "gelu"):
            raise ValueError(f"unknown expert activation {kind!r}; choose swiglu or gelu")
        self.num_experts, self.dim, self.hidden, self.kind = num_experts, dim, hidden, kind
        h_in = 2 * hidden if kind == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.randn(num_experts, dim, h_in) / math.sqrt(dim))
        self.w_out = nn.Parameter(torch.randn(num_experts, hidden, dim) / math.sqrt(hidden))

    def forward(self, x: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        """x (N, d), expert_ids and weights (N, k) with ids into this bank."""
        return moe_dispatch(x, expert_ids, weights, self.w_in, self.w_out, self.kind)


@dataclass
class RoutingStats:
    """Per-layer routing statistics over the tokens seen since the last reset."""

    load: list[float]
    entropy: float
    max_over_mean: float
    distinct_combinations: int
    non_local_share: float


class MoEFeedForward(nn.Module):
    """One layer's MoE FFN: route each token to ``top_k`` of ``candidates`` (global ids in ``bank``).

    ``local`` marks which candidates are this layer's own experts (all of them for a layer-local MoE).
    The router's own load-balancing weight defaults to 0: the model counts balance over whole expert pools
    with ``rexmoe.pool_balance_loss``, which equals the per-layer loss when pools are layer-local.
    """

    def __init__(self, bank: ExpertFFNBank, candidates: list[int], local: list[int], top_k: int = 2,
                 renormalize: bool = True, aux_loss_weight: float = 0.0, z_loss_weight: float = 0.001) -> None:
        super().__init__()
        self.bank = bank
        self.register_buffer("candidates", torch.tensor(candidates, dtype=torch.long), persistent=False)
        self.register_buffer("is_local", torch.tensor([c in set(local) for c in candidates]), persistent=False)
        self.router = NoisyTopKRouter(bank.dim, len(candidates), gate_hidden=None, mode="topk", top_k=top_k,
                                      renormalize=renormalize, aux_loss_weight=aux_loss_weight,
                                      z_loss_weight=z_loss_weight)
        self.last_routing: RouterOutput | None = None
        self._combinations: set[int] = set()
        # mixed-radix code of a sorted top-k tuple of candidate positions (base C), unique per combination
        radix = torch.tensor([len(candidates) ** i for i in reversed(range(top_k))], dtype=torch.long)
        self.register_buffer("_radix", radix, persistent=False)

    def forward(self, x: Tensor, candidate_mask: Tensor | None = None) -> Tensor:
        """x (B, T, d) -> (B, T, d). ``candidate_mask`` (C,) bool hides candidates (PSR)."""
        flat = x.reshape(-1, x.shape[-1])
        routed = self.router(flat, candidate_mask=candidate_mask)
        self.last_routing = routed
        kept = routed.weights.gather(1, routed.indices)
        out = self.bank(flat, self.candidates[routed.indices], kept)
        self.count_combinations(routed.indices)
        return out.reshape_as(x)

    @torch.no_grad()
    def count_combinations(self, indices: Tensor) -> None:
        """Record each token's sorted top-k tuple as one int (the set grows by few per step); a sum of
        products, since CUDA has no integer matmul."""
        codes = (indices.sort(dim=1).values * self._radix).sum(dim=1)
        self._combinations.update(torch.unique(codes).tolist())

    def stats(self) -> RoutingStats:
        load = self.router.usage()
        slots = self.router.usage_counts.sum()
        non_local = float(self.router.usage_counts[~self.is_local.cpu()].sum() / slots) if slots > 0 else 0.0
        return RoutingStats(load=[round(float(v), 5) for v in load], entropy=self.router.usage_entropy(),
                            max_over_mean=float(load.max() / load.mean()),
                            distinct_combinations=len(self._combinations), non_local_share=non_local)

    def reset_stats(self) -> None:
        self.router.reset_usage()
        self._combinations.clear()
