"""The SB-MoE head: one Mixture-of-Experts block on the pooled embedding, as a sentence-transformers module.

From "Mixture of Experts Approaches in Dense Retrieval Tasks": a gate Linear(d, d/2) -> ReLU ->
Linear(d/2, E) routes the pooled embedding x to E bottleneck experts Linear(d, d/2) -> ReLU ->
Linear(d/2, d); the output is normalize(sum_i g_i * expert_i(x)) + x. Training routes with noisy top-1;
inference uses ``mode``: ``top1`` (top-1 of the softmax), ``all`` (dense softmax) or ``random`` (control).

Saved with its config and weights like any sentence-transformers module, so ``SentenceTransformer(path)``
rebuilds the whole retriever.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from sentence_transformers.sentence_transformer.modules import Module
from torch import Tensor

from ..moe.experts import ExpertBank
from ..moe.router import NoisyTopKRouter

INFERENCE_MODES = ("top1", "all", "random")


class SBMoEHead(Module):
    config_keys: list[str] = ["dim", "num_experts", "latent", "gate_hidden", "mode", "noisy", "aux_loss_weight"]

    def __init__(
        self,
        dim: int,
        num_experts: int = 6,
        latent: int | None = None,
        gate_hidden: int | None = None,
        mode: str = "top1",
        noisy: bool = True,
        aux_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown SB-MoE mode {mode!r}; choose one of {', '.join(INFERENCE_MODES)}")
        self.dim, self.num_experts, self.mode, self.noisy = dim, num_experts, mode, noisy
        self.latent = latent or dim // 2
        self.gate_hidden = gate_hidden or dim // 2
        self.aux_loss_weight = aux_loss_weight
        self.router = NoisyTopKRouter(dim, num_experts, gate_hidden=self.gate_hidden, mode="top1", noisy=noisy,
                                      aux_loss_weight=aux_loss_weight)
        self.experts = ExpertBank(num_experts, dim, self.latent)
        self._aux_losses: list[Tensor] = []

    def routing_mode(self) -> str:
        """Training always routes top-1 (the random control stays random); inference uses ``mode``."""
        if self.training:
            return "random" if self.mode == "random" else "top1"
        return self.mode

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        x = features["sentence_embedding"]
        self.router.mode = self.routing_mode()
        routed = self.router(x)
        mixed = self.experts(x, routed.weights)
        features["sentence_embedding"] = F.normalize(mixed, p=2, dim=-1) + x
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
        head = cls(**{k: v for k, v in config.items() if k in cls.config_keys})
        return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=head, **hub_kwargs)
