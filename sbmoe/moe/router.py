"""Routers: which experts each input goes to, and with what weight.

One router serves both users of the MoE core. SB-MoE routes a pooled sentence embedding with a two-layer
gate and noisy top-1 (Shazeer et al. 2017 noise); a token-level MoE layer routes tokens with a linear gate,
top-k and optional renormalisation. Both get a Switch load-balancing loss, a router z-loss, and usage
counters, and both accept a candidate mask (ReXMoE's progressive scaling hides experts with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# How routing logits become weights. ``topk``/``top1`` keep the top probabilities; ``all`` is the dense
# softmax; ``random`` one uniformly random expert at weight 1 (a control); ``straight_through`` and
# ``gumbel`` pick one expert at weight 1 in the forward pass but pass the softmax's gradient to the gate
# (straight-through estimator; Gumbel-softmax with hard samples), so a hard top-1 router still learns.
ROUTING_MODES = ("top1", "topk", "all", "random", "straight_through", "gumbel")


@dataclass
class RouterOutput:
    """``weights`` is dense (N, E) with zeros for unselected experts; ``indices`` (N, k) the selected ones."""

    weights: Tensor
    indices: Tensor
    probs: Tensor
    logits: Tensor
    aux_loss: Tensor


def switch_load_balancing_loss(probs: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Switch Transformer loss E * sum_i f_i * P_i.

    f_i is the fraction of routing slots (N * k) sent to expert i and P_i the mean router probability of
    expert i; it is 1 when routing is uniform and grows as load concentrates.
    """
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / indices.numel()
    return num_experts * torch.sum(fraction * probs.mean(dim=0))


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits (keeps logits small)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


class NoisyTopKRouter(nn.Module):
    """Gate network + routing rule.

    Args:
        dim: input size.
        num_experts: E.
        gate_hidden: hidden size of a two-layer gate Linear(d, h) -> ReLU -> Linear(h, E); ``None`` for
            a single linear gate (token-level MoE).
        mode: the default routing rule, one of ``ROUTING_MODES``; ``forward`` takes another per call.
        top_k: experts per input in ``topk`` mode.
        noisy: in training, add N(0, 1) * softplus(Linear(d, E)(x)) to the logits.
        renormalize: divide the kept top-k probabilities by their sum.
        aux_loss_weight / z_loss_weight: weights of the two auxiliary losses in ``aux_loss``.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        gate_hidden: int | None = None,
        mode: str = "topk",
        top_k: int = 1,
        noisy: bool = False,
        renormalize: bool = False,
        aux_loss_weight: float = 0.0,
        z_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        self.num_experts = num_experts
        self.mode = mode
        self.top_k = 1 if mode == "top1" else top_k
        self.noisy = noisy
        self.renormalize = renormalize
        self.aux_loss_weight = aux_loss_weight
        self.z_loss_weight = z_loss_weight
        if gate_hidden is None:
            self.gate: nn.Module = nn.Linear(dim, num_experts)
        else:
            self.gate = nn.Sequential(nn.Linear(dim, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, num_experts))
        self.noise = nn.Linear(dim, num_experts) if noisy else None
        self.register_buffer("usage_counts", torch.zeros(num_experts, dtype=torch.float64), persistent=False)

    def forward(self, x: Tensor, candidate_mask: Tensor | None = None, mode: str | None = None) -> RouterOutput:
        """Route inputs ``x`` (N, d) by ``mode`` (default: the router's own).

        ``candidate_mask`` (E,) or (N, E) bool hides experts where False.
        """
        mode = mode or self.mode
        if mode not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        logits = self.gate(x)
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        if candidate_mask is not None:
            logits = logits.masked_fill(~candidate_mask.to(torch.bool), float("-inf"))
        probs = torch.softmax(logits, dim=-1)

        if mode == "all":
            weights = probs
            indices = probs.argmax(dim=-1, keepdim=True)
        elif mode == "random":
            allowed = torch.ones_like(probs) if candidate_mask is None else candidate_mask.expand_as(probs).to(probs)
            indices = torch.multinomial(allowed, 1)
            weights = torch.zeros_like(probs).scatter(1, indices, 1.0)
        elif mode in ("straight_through", "gumbel"):
            soft = F.gumbel_softmax(logits, tau=1.0, hard=False) if mode == "gumbel" and self.training else probs
            indices = soft.argmax(dim=-1, keepdim=True)
            hard = torch.zeros_like(soft).scatter(1, indices, 1.0)
            weights = hard - soft.detach() + soft  # value: one-hot; gradient: the softmax's
        else:
            kept, indices = probs.topk(1 if mode == "top1" else self.top_k, dim=-1)
            if self.renormalize:
                kept = kept / kept.sum(dim=-1, keepdim=True)
            weights = torch.zeros_like(probs).scatter(1, indices, kept)

        aux = probs.new_zeros(())
        if self.aux_loss_weight:
            aux = aux + self.aux_loss_weight * switch_load_balancing_loss(probs, indices, self.num_experts)
        if self.z_loss_weight:
            aux = aux + self.z_loss_weight * router_z_loss(logits.masked_fill(torch.isinf(logits), -1e4))
        with torch.no_grad():
            self.usage_counts += torch.bincount(indices.reshape(-1), minlength=self.num_experts).double()
        return RouterOutput(weights=weights, indices=indices, probs=probs, logits=logits, aux_loss=aux)

    def usage(self) -> Tensor:
        """Share of routing slots each expert received since the last reset (sums to 1)."""
        total = self.usage_counts.sum()
        return self.usage_counts / total if total > 0 else torch.full_like(self.usage_counts, 1 / self.num_experts)

    def usage_entropy(self) -> float:
        """Entropy (nats) of ``usage()``: log E when balanced, 0 when one expert takes everything."""
        p = self.usage()
        return max(0.0, float(-(p[p > 0] * p[p > 0].log()).sum()))  # +0.0, not -0.0, when collapsed

    def reset_usage(self) -> None:
        self.usage_counts.zero_()
