"""What to quantise in a model, and its calibration statistics: the tiny MoE LM (``sbmoe.lm``) and an
SB-MoE retriever (encoder linears + ``SBMoEHead`` experts).

A ``QuantTarget`` maps block names to slots that read and write a weight as (K_in, N_out) (nn.Linear
stores (out, in): slots transpose). Calibration hooks accumulate each block's input Gram, expert
activation counts (routing traces) and, for the LM, a per-layer MoE block score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..dispatch import activation
from ..experts import ExpertBank
from .blocks import LinearBlock
from .sensitivity import Gram


@dataclass
class Slot:
    block: LinearBlock
    get: Callable[[], Tensor]
    set: Callable[[Tensor], None]


@dataclass
class QuantTarget:
    slots: dict[str, Slot]
    grams: dict[str, Gram] = field(default_factory=dict)
    tokens: int = 0  # calibration tokens (or pooled vectors) the whole model saw
    block_scores: dict[int, float] = field(default_factory=dict)

    @property
    def blocks(self) -> list[LinearBlock]:
        return [slot.block for slot in self.slots.values()]

    def weights(self) -> dict[str, Tensor]:
        return {name: slot.get().detach().clone() for name, slot in self.slots.items()}

    def set_frequencies(self, counts: dict[str, int]) -> None:
        for name, count in counts.items():
            self.slots[name].block.frequency = count / max(self.tokens, 1)


def linear_slot(name: str, module: nn.Linear, kind: str, layer: int) -> Slot:
    def write(w: Tensor) -> None:
        module.weight.data.copy_(w.T.to(module.weight.dtype))

    return Slot(LinearBlock(name, kind, layer, module.weight.numel()), lambda: module.weight.detach().T, write)


def stacked_slot(name: str, param: Tensor, index: int, kind: str, layer: int) -> Slot:
    def write(w: Tensor) -> None:
        param.data[index].copy_(w.to(param.dtype))

    return Slot(LinearBlock(name, kind, layer, param[index].numel(), expert=index), lambda: param.detach()[index],
                write)


@contextmanager
def hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gram_pre_hook(gram: Gram) -> Callable:
    return lambda module, inputs: gram.add(inputs[0])


# ---- the MoE LM ----

def lm_target(model: nn.Module, attention: bool = True) -> QuantTarget:
    """Every expert's w_in (gate and up: its two column halves, tied by living in one weight) and w_out;
    with ``attention``, each block's qkv and output projections. Routers, embeddings and norms stay float."""
    bank, per_layer = model.experts, model.config.experts_per_layer
    slots: dict[str, Slot] = {}
    if attention:
        for layer, block in enumerate(model.blocks):
            for part in ("qkv", "proj"):
                name = f"blocks.{layer}.attn.{part}"
                slots[name] = linear_slot(name, getattr(block.attn, part), "attention", layer)
    for e in range(bank.num_experts):
        for part in ("w_in", "w_out"):
            name = f"experts.{part}.{e}"
            slots[name] = stacked_slot(name, getattr(bank, part), e, "routed", e // per_layer)
    return QuantTarget(slots)


@torch.no_grad()
def calibrate_lm(model: nn.Module, target: QuantTarget, stream: Tensor, tokens: int, seed: int,
                 batch_size: int = 16) -> None:
    """Run ``tokens`` tokens of random windows of ``stream`` (seeded) through the model, collecting Grams,
    expert counts and each layer's MoE block score (mean ||MoE(h)|| / ||h|| over tokens)."""
    seq_len, bank = model.config.seq_len, model.experts
    windows = max(1, -(-tokens // seq_len))
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (windows,), generator=generator).tolist()
    counts = {n: 0 for n, s in target.slots.items() if s.block.expert is not None}
    score_sums = [0.0] * len(model.blocks)
    grams = {n: Gram(s.get().shape[0]) for n, s in target.slots.items()}

    def bank_hook(module, inputs, output) -> None:
        x, expert_ids, _ = inputs
        for e in expert_ids.unique().tolist():
            rows = x[(expert_ids == e).any(dim=1)]
            grams[f"experts.w_in.{e}"].add(rows)
            grams[f"experts.w_out.{e}"].add(activation(rows @ bank.w_in[e], bank.kind))
            for part in ("w_in", "w_out"):
                counts[f"experts.{part}.{e}"] += rows.shape[0]

    def score_hook(layer: int) -> Callable:
        def hook(module, inputs, output) -> None:
            ratio = output.norm(dim=-1) / inputs[0].norm(dim=-1).clamp_min(1e-12)
            score_sums[layer] += float(ratio.sum())
        return hook

    handles = [bank.register_forward_hook(bank_hook)]
    handles += [b.moe.register_forward_hook(score_hook(i)) for i, b in enumerate(model.blocks)]
    for layer, block in enumerate(model.blocks):
        for part in ("qkv", "proj"):
            if f"blocks.{layer}.attn.{part}" in grams:
                module = getattr(block.attn, part)
                handles.append(module.register_forward_pre_hook(gram_pre_hook(grams[f"blocks.{layer}.attn.{part}"])))
    model.eval()
    with hooks(handles):
        for i in range(0, windows, batch_size):
            batch = torch.stack([stream[s:s + seq_len] for s in starts[i:i + batch_size]]).long()
            model(batch)
    target.grams, target.tokens = grams, windows * seq_len
    target.block_scores = {layer: total / target.tokens for layer, total in enumerate(score_sums)}
    target.set_frequencies(counts)


# ---- an SB-MoE retriever (sentence-transformers) ----

def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """SB-MoE heads by structure (a router beside an ``ExpertBank``): moe does not import models."""
    return {name: module for name, module in model.named_modules()
            if isinstance(getattr(module, "experts", None), ExpertBank) and hasattr(module, "router")}


def sbmoe_target(model: nn.Module) -> QuantTarget:
    """Every encoder nn.Linear (kind dense, layer from its name) and every head expert's w1 and w2 (routed,
    one layer past the encoder). The heads' routers stay float."""
    heads = head_modules(model)
    slots: dict[str, Slot] = {}
    layers = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(name.startswith(h + ".") for h in heads):
            match = re.search(r"layer\.(\d+)\.", name)
            layer = int(match.group(1)) if match else 0
            layers = max(layers, layer + 1)
            slots[name] = linear_slot(name, module, "dense", layer)
    for head_name, head in heads.items():
        for e in range(head.num_experts):
            for part in ("w1", "w2"):
                name = f"{head_name}.experts.{part}.{e}"
                slots[name] = stacked_slot(name, getattr(head.experts, part), e, "routed", layers)
    return QuantTarget(slots)


@torch.no_grad()
def calibrate_sbmoe(model, target: QuantTarget, texts: list[str], batch_size: int = 32) -> None:
    """Encode ``texts``, collecting Grams of every block and the head experts' routing counts."""
    grams = {n: Gram(s.get().shape[0]) for n, s in target.slots.items()}
    counts = {n: 0 for n, s in target.slots.items() if s.block.expert is not None}
    seen = [0]
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(gram_pre_hook(grams[n])) for n, s in target.slots.items()
               if s.block.expert is None]

    def router_hook(head_name: str, head) -> Callable:
        def hook(module, inputs, output) -> None:
            x = inputs[0]
            seen[0] += x.shape[0]
            for e in range(head.num_experts):
                rows = x[output.weights[:, e] > 0]
                grams[f"{head_name}.experts.w1.{e}"].add(rows)
                hidden = torch.relu(rows @ head.experts.w1[e] + head.experts.b1[e])
                grams[f"{head_name}.experts.w2.{e}"].add(hidden)
                for part in ("w1", "w2"):
                    counts[f"{head_name}.experts.{part}.{e}"] += rows.shape[0]
        return hook

    handles += [head.router.register_forward_hook(router_hook(n, head)) for n, head in head_modules(model).items()]
    with hooks(handles):
        model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_tensor=True)
    target.grams, target.tokens = grams, max(seen[0], 1)
    target.set_frequencies(counts)
