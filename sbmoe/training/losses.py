"""Training losses: the in-batch ranking loss plus the SB-MoE routers' auxiliary losses."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import dot_score
from torch import Tensor, nn

from ..models.pipeline import sbmoe_heads


def ranking_loss(model: SentenceTransformer, temperature: float, gather: bool = False) -> nn.Module:
    """MultipleNegativesRankingLoss over dot products / temperature (in-batch and hard negatives),
    plus every head's auxiliary loss. ``gather`` (data-parallel runs) scores each rank's queries against
    the documents of every rank, so the ranking loss is the one-process loss over the global batch."""
    return RouterAuxLoss(model, MultipleNegativesRankingLoss(model, scale=1.0 / temperature,
                                                             similarity_fct=dot_score,
                                                             gather_across_devices=gather))


class RouterAuxLoss(nn.Module):
    """A ranking loss plus the auxiliary (load-balancing) losses the SB-MoE heads recorded in its forward."""

    def __init__(self, model: SentenceTransformer, base_loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.base_loss = base_loss

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        loss = self.base_loss(sentence_features, labels)
        for head in sbmoe_heads(self.model):
            aux = head.pop_aux_loss()
            if aux is not None:
                loss = loss + aux
        return loss
