"""Token-by-token decoding of a ``MoELM`` whose experts run on an ``ExpertOffloadRuntime``.

Each step feeds one token per sequence (a key/value cache holds the prefix), walks the blocks in order and
hands every block's routed tokens to the runtime. Once a block is routed, the copies of its own missing
experts start (all of them, before anything for the next block, so the block never waits behind a
prefetch). The runtime's mode then decides what is copied ahead: in ``prefetch-all`` block l asks for all of
block l+1's candidates; in ``pre-gated`` block l runs block l+1's pre-gate on its MoE input and asks for the
chosen experts; both before computing its own experts.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..moe.offload import ExpertOffloadRuntime, OffloadConfig
from ..moe.router import RouterOutput
from .model import MoELM


class OffloadedDecoder:
    """Incremental decoding with per-token latencies; ``run`` returns logits (B, T, V)."""

    def __init__(self, model: MoELM, config: OffloadConfig) -> None:
        if config.mode == "pre-gated" and not model.config.pregate:
            raise ValueError("offload mode 'pre-gated' needs a pre-gated model (LMConfig.pregate)")
        if model.tok_emb.weight.device != torch.device(config.device):
            raise ValueError(f"the model is on {model.tok_emb.weight.device}, the offload runtime on {config.device}")
        self.model = model.eval()
        bank = model.experts
        self.runtime = ExpertOffloadRuntime(bank.w_in, bank.w_out, bank.kind, config)
        self.token_seconds: list[float] = []
        self.token_spans: list[tuple[float, float]] = []  # on the runtime's timeline clock
        self.cache: list[tuple[Tensor, Tensor] | None] = []

    def _attend(self, layer: int, x: Tensor) -> Tensor:
        """Attention of one new position (B, d) over the cached keys and values of its block."""
        attn = self.model.blocks[layer].attn
        batch, dim = x.shape
        heads = attn.n_head
        q, k, v = (t.view(batch, heads, 1, dim // heads) for t in attn.qkv(x).split(dim, dim=1))
        if self.cache[layer] is not None:
            k, v = (torch.cat([old, new], dim=2) for old, new in zip(self.cache[layer], (k, v), strict=True))
        self.cache[layer] = (k, v)
        return attn.proj(F.scaled_dot_product_attention(q, k, v).reshape(batch, dim))

    def _route(self, layer: int, gate_input: Tensor) -> RouterOutput:
        return self.model.blocks[layer].moe.router(gate_input)

    @torch.no_grad()
    def step(self, tokens: Tensor, position: int) -> Tensor:
        """Logits (B, V) for one new token per sequence at ``position``."""
        model, runtime = self.model, self.runtime
        x = model.tok_emb(tokens) + model.pos_emb.weight[position]
        blocks = model.blocks
        routed: RouterOutput | None = None
        for layer, block in enumerate(blocks):
            with runtime.block(layer):
                x = x + self._attend(layer, block.ln_1(x))
                h = block.ln_2(x)
                if routed is None or not model.config.pregate:
                    routed = self._route(layer, h)
                ids = block.moe.candidates[routed.indices]
                ahead = self._route(layer + 1, h) if model.config.pregate and layer + 1 < len(blocks) else None
                in_use = ids.unique().tolist()
                runtime.fetch_missing(in_use)  # this block's misses go first on the link
                if layer + 1 < len(blocks) and runtime.config.mode in ("prefetch-all", "pre-gated"):
                    nxt = blocks[layer + 1].moe.candidates
                    wanted = nxt if runtime.config.mode == "prefetch-all" else nxt[ahead.indices].unique()
                    runtime.prefetch(wanted.tolist(), in_use)
                x = x + runtime.run_experts(h, ids, routed.weights.gather(1, routed.indices))
                routed = ahead
        return model.head(model.ln_f(x))

    def run(self, tokens: Tensor) -> Tensor:
        """Teacher-forced decoding of ``tokens`` (B, T), T <= seq_len: logits (B, T, V)."""
        if tokens.shape[1] > self.model.config.seq_len:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the model's seq_len {self.model.config.seq_len}")
        self.cache = [None] * len(self.model.blocks)
        logits = []
        for position in range(tokens.shape[1]):
            start = time.perf_counter()
            logits.append(self.step(tokens[:, position], position))
            end = time.perf_counter()
            self.token_seconds.append(end - start)
            self.token_spans.append((start - self.runtime.origin, end - self.runtime.origin))
        return torch.stack(logits, dim=1)

    def summary(self) -> dict[str, Any]:
        ms = sorted(1e3 * t for t in self.token_seconds)
        return {**self.runtime.summary(), "tokens": len(ms), "token_ms_mean": sum(ms) / len(ms),
                "token_ms_p50": ms[len(ms) // 2], "token_ms_p90": ms[int(0.9 * (len(ms) - 1))]}

    def close(self) -> None:
        self.runtime.close()
