"""The module list of a sentence-transformers encoder: where Pooling sits, what comes after it.

The SB-MoE head reads pooled embeddings, so every operation on a pipeline (changing pooling, cutting it
at Pooling, inserting a head, applying the post-pooling modules to cached embeddings) starts from the
position of its Pooling module, found by ``pooling_position``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Router
from torch import nn

from .declared import copy_declarations
from .sbmoe_head import SBMoEHead


def pooling_position(model: SentenceTransformer) -> int | None:
    """Index of the Pooling module in ``model``, None when there is none."""
    return next((i for i, module in enumerate(model) if isinstance(module, Pooling)), None)


def require_pooling(model: SentenceTransformer) -> int:
    position = pooling_position(model)
    if position is None:
        raise ValueError("model has no Pooling module (the SB-MoE head reads pooled embeddings)")
    return position


def replace_pooling(model: SentenceTransformer, mode: str) -> None:
    """Swap the Pooling module for one with ``mode`` (mean, cls, max), same dimension."""
    position = require_pooling(model)
    model[position] = Pooling(model[position].embedding_dimension, pooling_mode=mode)


def pooling_mode(model: SentenceTransformer) -> str:
    """The pooling mode of the model's Pooling module (part of cache keys and index metadata)."""
    position = pooling_position(model)
    if position is None:
        return "none"
    mode = model[position].pooling_mode
    return mode if isinstance(mode, str) else "+".join(mode)


def normalizes(model: SentenceTransformer) -> bool:
    return any(isinstance(m, Normalize) for m in model)


def set_normalize(model: SentenceTransformer, normalize: bool) -> None:
    """Append or remove the final Normalize module."""
    has = normalizes(model)
    if normalize and not has:
        model.append(Normalize())
    elif not normalize and has:
        kept = [m for m in model if not isinstance(m, Normalize)]
        for key in list(model._modules):
            del model._modules[key]
        for index, module in enumerate(kept):
            model.add_module(str(index), module)


def pooling_prefix(model: SentenceTransformer) -> SentenceTransformer:
    """The model's modules up to and including Pooling: where the SB-MoE head reads its input (same prompts
    and similarity as ``model``)."""
    prefix = SentenceTransformer(modules=list(model)[:require_pooling(model) + 1], device=str(model.device))
    return copy_declarations(model, prefix)


def after_pooling(model: SentenceTransformer) -> list[nn.Module]:
    """The modules after Pooling (SB-MoE head or Router of heads, Normalize): cheap next to the encoder."""
    return list(model)[require_pooling(model) + 1:]


def with_head(model: SentenceTransformer, head: nn.Module | None) -> SentenceTransformer:
    """A new pipeline with ``head`` inserted right after Pooling (before any Normalize), declaring the same prompts
    and similarity as ``model``."""
    modules = list(model)
    if head is not None:
        modules.insert(require_pooling(model) + 1, head)
    return copy_declarations(model, SentenceTransformer(modules=modules, device=str(model.device)))


def sbmoe_heads(model: nn.Module) -> list[SBMoEHead]:
    """Every SB-MoE head in a pipeline (two with separate query and document heads)."""
    return [m for m in model.modules() if isinstance(m, SBMoEHead)]


def pooled_batches(pooled: np.ndarray, batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
    """Float32 tensors over consecutive rows of ``pooled``, each a copy: ``pooled`` is often a read-only
    memory map of cached embeddings, which ``torch.from_numpy`` cannot share safely (it warns)."""
    for start in range(0, len(pooled), batch_size):
        yield torch.tensor(np.asarray(pooled[start:start + batch_size]), dtype=torch.float32, device=device)


@torch.inference_mode()
def apply_after_pooling(model: SentenceTransformer, pooled: np.ndarray, task: str = "document",
                        batch_size: int = 8192) -> np.ndarray:
    """``model``'s post-pooling modules over pooled embeddings, so one encoder pass serves every head
    setting (e.g. SB-MoE inference modes) and equals encoding the texts with ``model`` up to rounding."""
    modules = after_pooling(model)
    parts = []
    for batch in pooled_batches(pooled, batch_size, model.device):
        features = {"sentence_embedding": batch}
        for module in modules:
            features = module(features, task=task) if isinstance(module, Router) else module(features)
        parts.append(features["sentence_embedding"].float().cpu().numpy())
    return np.concatenate(parts) if parts else np.array(pooled, copy=True)
