"""Content fingerprints of encoders: what an index or an embedding cache entry was built with."""

from __future__ import annotations

import hashlib
import json

import torch
from sentence_transformers import SentenceTransformer


def _module_config(module: torch.nn.Module) -> dict:
    if hasattr(module, "get_config_dict"):
        try:
            return dict(module.get_config_dict())
        except Exception:  # some modules only describe themselves partially
            return {}
    return {}


def model_fingerprint(model: SentenceTransformer) -> str:
    """sha256 over the pipeline's module types, their configs, max length and every weight's bytes.

    Two models give the same fingerprint exactly when they compute the same embeddings, whatever
    name or path they were loaded from; a fine-tuned copy of a model gets a new one. A layer that peft wrapped
    for an adapter and left behind when the adapter was deleted computes what it did before, so its weights
    count under their original names (``query.base_layer.weight`` as ``query.weight``); adapter weights that
    remain are hashed like any other.
    """
    digest = hashlib.sha256()
    layout = [(type(m).__name__, _module_config(m)) for m in model]
    digest.update(json.dumps({"modules": layout, "max_seq_length": model.max_seq_length},
                             sort_keys=True, default=str).encode())
    weights = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()}
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def document_fingerprint(model: SentenceTransformer) -> str:
    """The fingerprint of the model's document side: the whole model's, except for a model whose first module
    encodes documents with a base encoder it names (a routed model of query-side experts), whose documents, cache
    entries and indexes are the base model's."""
    return getattr(model[0], "base_fingerprint", None) or model_fingerprint(model)
