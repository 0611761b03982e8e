"""Random routing and expert weights shared by the kernel tests."""

from __future__ import annotations

import torch


def random_routing(tokens: int, top_k: int, experts: int, used: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct experts per token drawn from the first ``used`` experts (the rest stay empty) and softmax weights."""
    generator = torch.Generator().manual_seed(seed)
    pool = used or experts
    indices = torch.stack([torch.randperm(pool, generator=generator)[:top_k] for _ in range(tokens)])
    weights = torch.softmax(torch.randn(tokens, top_k, generator=generator), dim=-1)
    return indices, weights


def expert_weights(experts: int, dim: int, hidden: int, kind: str, dtype: torch.dtype,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """w_in (E, d, h_in) and w_out (E, h, d) scaled so activations stay O(1) (fp16 tolerances stay meaningful)."""
    generator = torch.Generator().manual_seed(seed)
    h_in = 2 * hidden if kind == "swiglu" else hidden
    w_in = torch.randn(experts, dim, h_in, generator=generator) / dim ** 0.5
    w_out = torch.randn(experts, hidden, dim, generator=generator) / hidden ** 0.5
    return w_in.to(dtype), w_out.to(dtype)
