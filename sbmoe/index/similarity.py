"""A model's similarity function as FAISS serves it exactly.

cosine: an inner-product index over L2-normalised vectors (queries normalised the same way); dot: an
inner-product index over the raw vectors; euclidean: an L2 index, its squared distances returned as negative
distances (sentence-transformers' ``euclidean_sim``). manhattan has no exact FAISS index and is refused.
"""

from __future__ import annotations

import numpy as np

SEARCHABLE = ("cosine", "dot", "euclidean")
LEGACY_SIMILARITY = "dot"  # what an index folder written before meta.json named its similarity was built for


def check_searchable(similarity: str, model: str) -> None:
    """One line naming the model and the field when FAISS cannot serve ``similarity`` exactly."""
    if similarity not in SEARCHABLE:
        raise ValueError(f"model {model} declares similarity_fn_name {similarity!r} "
                         f"(config_sentence_transformers.json), which FAISS cannot search exactly; pass "
                         f"--similarity with one of {', '.join(SEARCHABLE)}")


def metric_name(similarity: str) -> str:
    """meta.json's ``metric``: "l2" for euclidean, "ip" otherwise."""
    return "l2" if similarity == "euclidean" else "ip"


def faiss_metric(similarity: str) -> int:
    import faiss

    return faiss.METRIC_L2 if similarity == "euclidean" else faiss.METRIC_INNER_PRODUCT


def prepare_vectors(vectors: np.ndarray, similarity: str) -> np.ndarray:
    """Contiguous float32 vectors as the index stores and searches them: L2-normalised for cosine."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if similarity != "cosine":
        return out
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)  # sentence-transformers' normalize_embeddings uses the same floor


def scores_from_faiss(raw: np.ndarray, similarity: str) -> np.ndarray:
    """FAISS's result values as similarity scores (higher is better): negative distances for euclidean."""
    if similarity == "euclidean":
        return -np.sqrt(np.maximum(raw, 0.0))
    return raw
