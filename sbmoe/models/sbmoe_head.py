"""The SB-MoE head: one Mixture-of-Experts block on the pooled embedding, as a sentence-transformers module.

From "Mixture of Experts Approaches in Dense Retrieval Tasks": a gate Linear(d, d/2) -> ReLU ->
Linear(d/2, E) routes the pooled embedding x to E bottleneck experts Linear(d, d/2) -> ReLU -> Linear(d/2, d).

How the gate is trained (``gate``):

- ``paper``: the paper's formulation, ``x + normalize(sum_i w_i E_i(x))`` with noisy top-1 routing. Under
  top-1 the normalisation divides the single weight w_i back out, so the output does not depend on the
  gate and **its router gets no gradient**: routing stays at its random initialisation.
- ``scaled``: noisy top-1 with the weight outside the normalisation, ``x + w_i normalize(E_i(x))``.
- ``dense``: the dense softmax mixture ``x + sum_i p_i normalize(E_i(x))`` in training.
- ``straight_through`` / ``gumbel``: one expert at weight 1 in the forward pass, the softmax's (or a
  Gumbel-softmax sample's) gradient in the backward pass.

The gate reads the pooled embedding standardised (``router_norm``); the experts read it as it is.

Inference routing (``mode``): ``top1`` (one expert, with the weight the gate was trained to give it),
``all`` (dense softmax) or ``random`` (a uniformly random expert; also used in training: the control arm).
The mode is passed to the router per call, never stored on it.

Saved with its config and weights like any sentence-transformers module, so ``SentenceTransformer(path)``
rebuilds the whole retriever.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.modules import Module
from torch import Tensor

from ..moe.experts import ExpertBank
from ..moe.router import NoisyTopKRouter, RouterOutput
from .choices import GATES, INFERENCE_MODES, MOE_CHOICES, TRAINABLE_GATES

__all__ = ["GATES", "INFERENCE_MODES", "MOE_CHOICES", "TRAINABLE_GATES", "SBMoEHead"]


class SBMoEHead(Module):
    config_keys: list[str] = ["dim", "num_experts", "latent", "gate_hidden", "mode", "gate", "noisy",
                              "aux_loss_weight", "router_norm"]

    def __init__(
        self,
        dim: int,
        num_experts: int = 6,
        latent: int | None = None,
        gate_hidden: int | None = None,
        mode: str = "top1",
        gate: str = "scaled",
        noisy: bool = True,
        aux_loss_weight: float = 0.0,
        router_norm: bool = True,
    ) -> None:
        super().__init__()
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown SB-MoE mode {mode!r}; choose one of {', '.join(INFERENCE_MODES)}")
        if gate not in GATES:
            raise ValueError(f"unknown SB-MoE gate {gate!r}; choose one of {', '.join(GATES)}")
        self.dim, self.num_experts, self.mode, self.gate, self.noisy = dim, num_experts, mode, gate, noisy
        self.latent = latent or dim // 2
        self.gate_hidden = gate_hidden or dim // 2
        self.aux_loss_weight = aux_loss_weight
        self.router_norm = router_norm
        self.router = NoisyTopKRouter(dim, num_experts, gate_hidden=self.gate_hidden, mode="top1", noisy=noisy,
                                      aux_loss_weight=aux_loss_weight)
        self.experts = ExpertBank(num_experts, dim, self.latent)
        self._aux_losses: list[Tensor] = []

    def routing_mode(self, mode: str | None = None) -> str:
        """The router mode for this call: the gate's training rule, or ``mode`` (default ``self.mode``)
        at inference; the random control routes randomly in both."""
        mode = mode or self.mode
        if mode == "random":
            return "random"
        train_mode, top1_mode, _ = GATES[self.gate]
        if self.training:
            return train_mode
        return "all" if mode == "all" else top1_mode

    def mix(self, x: Tensor, weights: Tensor) -> Tensor:
        """The head's output for routing weights (N, E): x plus the normalised (weighted) expert outputs."""
        if GATES[self.gate][2]:
            return x + torch.einsum("ne,end->nd", weights, F.normalize(self.experts.all_experts(x), p=2, dim=-1))
        return x + F.normalize(self.experts(x, weights), p=2, dim=-1)

    def route(self, x: Tensor, mode: str | None = None) -> RouterOutput:
        """Route pooled embeddings. With ``router_norm`` the gate reads them standardised per vector (no
        learned scale): sentence embeddings share a large common component, which otherwise sends almost
        every input to one expert from initialisation on."""
        gate_input = F.layer_norm(x, (self.dim,)) if self.router_norm else x
        return self.router(gate_input, mode=self.routing_mode(mode))

    def forward(self, features: dict[str, Any], mode: str | None = None, **kwargs: Any) -> dict[str, Any]:
        x = features["sentence_embedding"]
        routed = self.route(x, mode)
        features["sentence_embedding"] = self.mix(x, routed.weights)
        if self.training and self.aux_loss_weight:
            self._aux_losses.append(routed.aux_loss)
        return features

    def pop_aux_loss(self) -> Tensor | None:
        """Mean auxiliary loss of the forward passes since the last call (the loss wrapper adds it)."""
        if not self._aux_losses:
            return None
        total = sum(self._aux_losses) / len(self._aux_losses)
        self._aux_losses = []
        return total

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> SBMoEHead:
        hub_kwargs = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
                      "local_files_only": local_files_only}
        config = cls.load_config(model_name_or_path=model_name_or_path, **hub_kwargs)
        config.setdefault("gate", "paper")  # heads saved before gates were configurable used the paper's
        config.setdefault("router_norm", False)  # ... and routed the raw pooled embedding
        head = cls(**{k: v for k, v in config.items() if k in cls.config_keys})
        return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=head, **hub_kwargs)
