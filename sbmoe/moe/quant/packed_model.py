"""Run a quantised model from its packed weights: nn.Linear blocks become ``PackedLinear`` and the LM's
expert bank a ``PackedExpertBank`` (each expert's packed w_in / w_out through the dequant matmul), so the
forward pass reads the int4/int8 storage instead of float copies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..dispatch import activation, align_by_expert
from .packing import PackedLinear, from_state


class PackedExpertBank(nn.Module):
    """The LM's ``ExpertFFNBank`` interface (x, expert_ids, weights) over per-expert packed weights, which
    may differ in bit width."""

    def __init__(self, w_in: list[PackedLinear], w_out: list[PackedLinear], kind: str) -> None:
        super().__init__()
        self.w_in, self.w_out, self.kind = nn.ModuleList(w_in), nn.ModuleList(w_out), kind
        self.num_experts, self.dim, self.hidden = len(w_in), w_in[0].in_features, w_out[0].in_features

    def forward(self, x: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        alignment = align_by_expert(expert_ids, self.num_experts)
        counts = (alignment.offsets[1:] - alignment.offsets[:-1]).tolist()
        pieces = [self.w_out[e](activation(self.w_in[e](rows), self.kind))
                  for e, rows in enumerate(x[alignment.tokens].split(counts)) if rows.shape[0]]
        expert_out = torch.cat(pieces) if pieces else x.new_zeros(0, x.shape[-1])
        scaled = expert_out * weights.reshape(-1)[alignment.order].unsqueeze(-1).to(expert_out.dtype)
        return torch.zeros_like(x).index_add_(0, alignment.tokens, scaled.to(x.dtype))


def packed_linear(state: dict, bias: Tensor | None = None) -> PackedLinear:
    return PackedLinear(from_state(state), bias, int(state["bits"]))


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def install_packed(model: nn.Module, states: dict[str, dict]) -> nn.Module:
    """Swap the model's quantised linears (and an LM's expert bank) for packed modules, in place."""
    modules = dict(model.named_modules())
    for name, state in states.items():
        if isinstance(modules.get(name), nn.Linear):
            _replace(model, name, packed_linear(state, modules[name].bias))
    bank = getattr(model, "experts", None)
    if bank is not None and hasattr(bank, "w_in") and f"experts.w_in.{bank.num_experts - 1}" in states:
        layers = [[packed_linear(states[f"experts.{part}.{e}"]) for e in range(bank.num_experts)]
                  for part in ("w_in", "w_out")]
        packed = PackedExpertBank(*layers, bank.kind)
        model.experts = packed
        for block in model.blocks:
            block.moe.bank = packed
    return model
