"""Pre-gated MoE on the LM testbed: convert a trained baseline, and measure each pre-gate's next-block
top-k recall against reference gates (the baseline's own gates, run on the pre-gated model's states)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..moe.pregate import topk_recall
from .model import MoELM


def to_pregated(model: MoELM) -> MoELM:
    """The same weights in a pre-gated model: block l+1's gate now reads block l's MoE input (fine-tune
    afterwards). The parameter names are the baseline's, so the state dict loads strictly."""
    if model.config.pregate:
        raise ValueError("the model is already pre-gated")
    converted = MoELM(replace(model.config, pregate=True))
    converted.load_state_dict(model.state_dict())
    return converted


def reference_gates(model: MoELM) -> list[nn.Module]:
    """Frozen copies of every block's router (the 'true gates' that pre-gates are measured against)."""
    gates = [copy.deepcopy(block.moe.router).eval() for block in model.blocks]
    for gate in gates:
        gate.requires_grad_(False)
    return gates


@torch.no_grad()
def pregate_recall(model: MoELM, gates: list[nn.Module], tokens: Tensor, batch_size: int = 16) -> list[float]:
    """Per block l >= 1: top-k recall of the experts the pre-gated ``model`` chose for block l (its pre-gate
    read block l-1's MoE input) against ``gates[l]`` applied to block l's own MoE input, over consecutive
    ``seq_len`` windows of ``tokens``."""
    if not model.config.pregate:
        raise ValueError("pregate_recall needs a pre-gated model")
    model.eval()
    seq_len = model.config.seq_len
    windows = tokens[: len(tokens) // seq_len * seq_len].long().view(-1, seq_len)
    inputs: dict[int, Tensor] = {}
    hooks = [block.ln_2.register_forward_hook(lambda _m, _a, out, layer=layer: inputs.__setitem__(layer, out))
             for layer, block in enumerate(model.blocks)]
    hits = [0.0] * len(model.blocks)
    try:
        for chunk in windows.split(batch_size):
            model(chunk)
            for layer in range(1, len(model.blocks)):
                chosen = model.blocks[layer].moe.last_routing.indices
                reference = gates[layer](inputs[layer].reshape(-1, inputs[layer].shape[-1])).indices
                hits[layer] += topk_recall(chosen, reference) * chunk.numel()
    finally:
        for hook in hooks:
            hook.remove()
    return [h / windows.numel() for h in hits[1:]]
