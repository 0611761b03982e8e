"""Pre-gated MoE (Hwang et al., ISCA 2024): block l's experts are chosen one block early.

The pre-gate of block l reads block l's MoE input and selects block l+1's experts, so an offload runtime
knows which experts block l+1 needs while block l still computes. Block 0 keeps its own gate and the last
block's input feeds no pre-gate. We keep each pre-gate as the ``router`` of the layer whose experts it
selects (so a pre-gated model has exactly the baseline's parameter names and counts, and a trained
baseline converts by loading its state dict); that layer is fed the previous block's MoE input as
``gate_input``. ``topk_recall`` measures how well a pre-gate predicts what a reference gate would choose.
"""

from __future__ import annotations

from torch import Tensor

from .moe_layer import MoEFeedForward


class PreGatedMoEFeedForward(MoEFeedForward):
    """A ``MoEFeedForward`` whose router may read another tensor (the previous block's MoE input)."""

    def forward(self, x: Tensor, candidate_mask: Tensor | None = None, gate_input: Tensor | None = None) -> Tensor:
        """x (B, T, d) -> (B, T, d); experts chosen from ``gate_input`` (B, T, d) when given, else from x."""
        if gate_input is None:
            return super().forward(x, candidate_mask)
        source = gate_input.reshape(-1, gate_input.shape[-1])
        routed = self.router(source, candidate_mask=candidate_mask)
        self.last_routing = routed
        mixed = self.bank(x.reshape(-1, x.shape[-1]), self.candidates[routed.indices],
                          routed.weights.gather(1, routed.indices))
        self.count_combinations(routed.indices)
        return mixed.reshape_as(x)


def topk_recall(predicted: Tensor, reference: Tensor) -> float:
    """Mean over tokens of |predicted top-k ∩ reference top-k| / k, for (N, k) id tensors without repeats
    inside a row (top-k ids are distinct)."""
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and reference {tuple(reference.shape)} differ")
    hits = (predicted.unsqueeze(2) == reference.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / reference.shape[1])
