"""A ranking step that costs the batch's real tokens: length-sorted micro-batches with exact gradients.

sentence-transformers' collator pads each column of a batch to its longest text, so at max length 512 one
long passage makes every text of the batch cost 512 tokens, and the whole padded batch is alive in memory
for the backward pass. This loss sorts each column's texts by length, encodes them up to Pooling in
micro-batches of about ``micro_batch_tokens`` real tokens, each trimmed to its own longest text, and caches
the gradient of the loss with respect to the pooled embeddings; a second pass re-encodes each micro-batch
with gradients and feeds the cached gradient in (GradCache, Gao et al. 2021; the two passes and the RNG
replay are sentence-transformers' ``CachedLossMixin``).

The modules after Pooling (the SB-MoE head or a Router of heads, Normalize) are cheap, so they run once on
the whole batch with gradients, column by column exactly as the plain step runs them (the anchor column,
then the candidate columns merged): the ranking loss, the routers' load-balancing loss and the router noise
are those of the plain full-batch step. Only the encoder's activations are bounded by the micro-batches.

``precision="bf16"`` runs the encoder (the modules before Pooling) under bfloat16 autocast in both passes;
its token embeddings come back to float32 before Pooling, so pooling, the head, the dot products and the
loss stay float32 (at temperature 1 over unnormalised dot products in the hundreds, a bfloat16 logit would
be off by whole units). On CPU the encoder then uses eager attention: in a training step with dropout, CPU
SDPA falls back to the same matrix products, and the step bench measures eager 10% faster at length 256 and
3% slower at 512 (eval/results/bench_train_step.md: micro-bf16 vs micro-bf16-sdpa); every tier-E cell of
the recipe experiment ran at 256 with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import CachedLossMixin, RandContext, _create_minibatch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import dot_score
from torch import Tensor, nn

from ..models.pipeline import require_pooling, sbmoe_heads
from .config import PRECISIONS

DEFAULT_MICRO_BATCH_TOKENS = 8192


@contextmanager
def bf16_autocast(modules: list[nn.Module], device_type: str) -> Iterator[None]:
    """bfloat16 autocast over ``modules``; on CPU their Hugging Face models switch to eager attention for
    the duration (restored after)."""
    swapped = []
    if device_type == "cpu":
        for module in modules:
            for hf in module.modules():
                impl = getattr(getattr(hf, "config", None), "_attn_implementation", None)
                if impl not in (None, "eager") and hasattr(hf, "set_attn_implementation"):
                    hf.set_attn_implementation("eager")
                    swapped.append((hf, impl))
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        for hf, impl in swapped:
            hf.set_attn_implementation(impl)


class CachedRankingLoss(CachedLossMixin, nn.Module):
    """In-batch (+ hard negative) ranking loss over dot products / temperature, plus the heads' auxiliary
    losses, computed with length-sorted micro-batches. Loss and gradients equal the plain step's (in fp32)."""

    def __init__(self, model: SentenceTransformer, temperature: float,
                 micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS, precision: str = "fp32") -> None:
        super().__init__()
        if micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be at least 1, got {micro_batch_tokens}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.model = model
        self.precision = precision
        self.ranking = MultipleNegativesRankingLoss(model, scale=1.0 / temperature, similarity_fct=dot_score)
        pooling = require_pooling(model)
        self.encoder = list(model)[:pooling]
        self.prefix = list(model)[:pooling + 1]
        self.post = list(model)[pooling + 1:]
        self.mini_batch_size = 1 << 30  # micro-batches are cut by tokens, never by count
        self.mini_batch_num_tokens = micro_batch_tokens
        self._orders: list[Tensor] = []
        self._features: list[dict[str, Any]] = []
        self._post_grads: list[tuple[nn.Parameter, Tensor]] = []

    def embed_minibatch(self, sentence_feature: dict[str, Tensor], begin: int, end: int, with_grad: bool,
                        copy_random_state: bool, random_state: RandContext | None = None
                        ) -> tuple[Tensor, RandContext | None]:
        """Pooled embeddings of rows ``begin:end`` (padding trimmed to their longest text)."""
        features = _create_minibatch(sentence_feature, begin, end)
        replay = random_state if random_state is not None else nullcontext()
        with replay, torch.enable_grad() if with_grad else torch.no_grad():
            state = RandContext(*features.values()) if copy_random_state else None
            with self._encoder_precision():
                for module in self.encoder:
                    features = module(features)
            features["token_embeddings"] = features["token_embeddings"].float()
            for module in self.prefix[len(self.encoder):]:
                features = module(features)
        return features["sentence_embedding"], state

    def _encoder_precision(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        return bf16_autocast(self.encoder, self.model.device.type)

    def _post(self, pooled: Tensor, task: Any, modality: Any) -> Tensor:
        """The modules after Pooling on pooled embeddings, routed like the column they came from."""
        features: dict[str, Any] = {"sentence_embedding": pooled, "task": task, "modality": modality}
        for module in self.post:
            kwargs = {key: features[key] for key in ("task", "modality")
                      if key in getattr(module, "forward_kwargs", ()) and features[key] is not None}
            features = module(features, **kwargs)
        return features["sentence_embedding"]

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *,
                       with_backward: bool = False) -> Tensor:
        pooled = [torch.cat(column)[torch.argsort(order)] for column, order in zip(reps, self._orders, strict=True)]
        tasks = [(feature.get("task"), feature.get("modality")) for feature in self._features]
        embeddings = [self._post(pooled[0], *tasks[0])]
        candidates = pooled[1:]
        if len(candidates) > 1 and len(set(tasks[1:])) == 1:  # merged, as the plain step embeds them
            merged = self._post(torch.cat(candidates), *tasks[1])
            embeddings += list(merged.split([len(c) for c in candidates]))
        else:
            embeddings += [self._post(c, *t) for c, t in zip(candidates, tasks[1:], strict=True)]
        loss = self.ranking.compute_loss_from_embeddings(embeddings, labels)
        for head in sbmoe_heads(self.model):
            aux = head.pop_aux_loss()
            if aux is not None:
                loss = loss + aux
        if not with_backward:
            return loss
        leaves = [rep for column in reps for rep in column]
        params = [p for module in self.post for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
        for leaf, grad in zip(leaves, grads[:len(leaves)], strict=True):
            leaf.grad = grad
        self._post_grads = [(p, g) for p, g in zip(params, grads[len(leaves):], strict=True) if g is not None]
        return loss.detach()

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = [dict(feature) for feature in sentence_features]
        self._orders = []
        for feature in features:
            order = torch.argsort(feature["attention_mask"].sum(dim=1), stable=True)
            rows = len(order)
            for key, value in feature.items():
                if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == rows:
                    feature[key] = value[order]
            self._orders.append(order)
        self._features = features
        loss = self.forward_cached(features, labels)
        if loss.requires_grad and self._post_grads:
            post_grads, self._post_grads = self._post_grads, []
            loss.register_hook(lambda grad_output: _accumulate(post_grads, grad_output))
        return loss


def _accumulate(post_grads: list[tuple[nn.Parameter, Tensor]], grad_output: Tensor) -> None:
    """Add the head's cached gradients, scaled like the rest of the backward pass (accumulation, fp16)."""
    for param, grad in post_grads:
        scaled = grad * grad_output
        param.grad = scaled if param.grad is None else param.grad + scaled
