"""A bank of E bottleneck MLP experts held as stacked weight tensors and evaluated in one batched op."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ExpertBank(nn.Module):
    """E experts Linear(d, h) -> ReLU -> Linear(h, d), weights stacked as (E, d, h) and (E, h, d).

    ``forward`` evaluates every expert on every input with two batched matmuls whose bias adds are fused
    (``baddbmm``; no Python loop over experts) and mixes them with dense routing weights; for the single
    pooled vector SB-MoE routes, computing all E experts costs less than gathering per-sample weights.
    """

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.empty(num_experts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert initialised as torch's nn.Linear would initialise it."""
        for weight, bias, fan_in in ((self.w1, self.b1, self.dim), (self.w2, self.b2, self.hidden)):
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)  # equals kaiming_uniform(a=sqrt(5)) of nn.Linear
            nn.init.uniform_(bias, -bound, bound)

    def all_experts(self, x: Tensor) -> Tensor:
        """(N, d) -> (E, N, d): every expert's output for every input."""
        stacked = x.unsqueeze(0).expand(self.num_experts, -1, -1)
        hidden = torch.relu(torch.baddbmm(self.b1.unsqueeze(1), stacked, self.w1))
        return torch.baddbmm(self.b2.unsqueeze(1), hidden, self.w2)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        """sum_e weights[n, e] * expert_e(x[n]) for routing weights (N, E)."""
        return torch.einsum("ne,end->nd", weights, self.all_experts(x))

    def expert(self, index: int, x: Tensor) -> Tensor:
        """One expert on its own (reference paths and the per-expert-loop benchmark)."""
        return torch.relu(x @ self.w1[index] + self.b1[index]) @ self.w2[index] + self.b2[index]
