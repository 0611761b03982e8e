"""A tiny decoder-only MoE language model, whole in one file (nanoGPT's layout).

Every block is attention + a token-level MoE FFN from ``sbmoe.moe``. All layers' experts live in one
``ExpertFFNBank`` (layer l owns experts l*E .. l*E+E-1); ``pool`` decides what each layer's router may
choose: its own experts (``local``, the layer-local baseline) or, under ReXMoE, the experts of r adjacent
layers (``group`` or ``sliding``). PSR hides non-local candidates early in training (``set_progress``).
With ``pregate`` every block after the first routes from the previous block's MoE input (Pre-gated MoE,
``sbmoe.moe.pregate``); the parameters are the baseline's, so a trained baseline converts by loading them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..moe.moe_layer import ExpertFFNBank, MoEFeedForward, RoutingStats
from ..moe.pregate import PreGatedMoEFeedForward
from ..moe.rexmoe import layer_candidates, pool_balance_loss, psr_mask
from .config import PSR_FRACTION, LMConfig

__all__ = ["PSR_FRACTION", "Block", "CausalSelfAttention", "LMConfig", "MoELM"]

class CausalSelfAttention(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, steps, self.n_head, dim // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        return self.proj(y.transpose(1, 2).contiguous().view(batch, steps, dim))


class Block(nn.Module):
    def __init__(self, config: LMConfig, layer: int, bank: ExpertFFNBank) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        candidates = layer_candidates(layer, config.n_layer, config.experts_per_layer, config.reuse, config.pool)
        own = list(range(layer * config.experts_per_layer, (layer + 1) * config.experts_per_layer))
        self.pregated = config.pregate and layer > 0
        layer_class = PreGatedMoEFeedForward if self.pregated else MoEFeedForward
        self.moe = layer_class(bank, candidates, own, top_k=config.top_k, z_loss_weight=config.z_loss_weight)

    def forward(self, x: Tensor, candidate_mask: Tensor | None,
                gate_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the block's output and its MoE input (the next block's gate input when pre-gated)."""
        x = x + self.attn(self.ln_1(x))
        h = self.ln_2(x)
        if self.pregated:
            return x + self.moe(h, candidate_mask, gate_input), h
        return x + self.moe(h, candidate_mask), h


class MoELM(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.progress = 1.0
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.experts = ExpertFFNBank(config.n_layer * config.experts_per_layer, config.d_model,
                                     config.expert_hidden, config.expert_kind)
        self.blocks = nn.ModuleList(Block(config, layer, self.experts) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1]; drives the PSR candidate mask."""
        self.progress = progress

    def candidate_mask(self) -> Tensor | None:
        c = self.config
        if c.psr_schedule == "none" or c.reuse == 1 or self.progress >= c.psr_fraction:
            return None
        num_candidates = c.experts_per_layer * c.reuse
        return psr_mask(c.experts_per_layer, num_candidates, self.progress, c.psr_fraction, c.psr_schedule, c.reuse)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        steps = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(steps, device=idx.device))
        mask = self.candidate_mask()
        if mask is not None:
            mask = mask.to(idx.device)
        h = None
        for block in self.blocks:
            x, h = block(x, mask, h)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss + self.auxiliary_loss()

    def auxiliary_loss(self) -> Tensor:
        """Pool-level load balancing plus each router's z-loss, from the last forward pass."""
        moes = [block.moe for block in self.blocks]
        balance = pool_balance_loss(moes, self.experts.num_experts)
        z = sum(m.last_routing.aux_loss for m in moes if m.last_routing is not None)
        return self.config.aux_loss_weight * balance + z

    def routing_stats(self) -> list[RoutingStats]:
        return [block.moe.stats() for block in self.blocks]

    def reset_routing_stats(self) -> None:
        for block in self.blocks:
            block.moe.reset_stats()

    def parameter_counts(self) -> dict[str, int]:
        """Total and per-token-active expert parameters, and everything else."""
        expert = sum(p.numel() for p in self.experts.parameters())
        per_expert = expert // self.experts.num_experts
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "expert": expert, "active_expert_per_token": per_expert * self.config.top_k *
                self.config.n_layer, "non_expert": total - expert}

    @torch.no_grad()
    def perplexity(self, tokens: Tensor, batch_size: int = 16) -> float:
        """exp(mean next-token loss) over consecutive non-overlapping windows of ``seq_len + 1`` tokens."""
        self.eval()
        span = self.config.seq_len + 1
        windows = tokens[: (len(tokens) - 1) // self.config.seq_len * self.config.seq_len + 1]
        starts = range(0, len(windows) - span + 1, self.config.seq_len)
        total, count = 0.0, 0
        for i in range(0, len(starts), batch_size):
            chunk = torch.stack([windows[s:s + span] for s in starts[i:i + batch_size]]).to(self.tok_emb.weight.device)
            logits, _ = self(chunk[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += chunk[:, 1:].numel()
        return math.exp(total / count)
