"""Embedding text with an encoder: batches by token length, and whole corpora through the embedding cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Router
from tqdm.auto import tqdm

from ..data import BeirDataset
from .embedding_cache import CorpusEmbeddingCache, EmbeddingKey
from .fingerprint import model_fingerprint
from .pipeline import pooling_mode

logger = logging.getLogger(__name__)


def _pad_batch(encoded: dict[str, list[list[int]]], rows: np.ndarray, pad_id: int, left: bool) -> dict:
    """Pad the pre-tokenized rows into tensors, as the tokenizer's own padding would."""
    width = max(len(encoded["input_ids"][i]) for i in rows)
    features: dict = {"modality": "text"}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        if key not in encoded:
            continue
        block = np.full((len(rows), width), fill, dtype=np.int64)
        for out_row, i in enumerate(rows):
            values = encoded[key][i]
            if left:
                block[out_row, width - len(values):] = values
            else:
                block[out_row, :len(values)] = values
        features[key] = torch.from_numpy(block)
    return features


@torch.inference_mode()
def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = False,
    progress: tqdm | None = None,
    task: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` (float32, input order), batching by exact token length to minimise padding.

    ``task`` ("query" or "document") picks the route of a model with a sentence-transformers Router
    (separate SB-MoE heads for queries and documents); other models ignore it.

    The texts are tokenized once in one batched call (truncated to ``max_seq_length``, exactly as
    ``model.preprocess`` does) and each batch is padded here, so embeddings equal ``model.encode``'s;
    only the batching differs (sentence-transformers sorts by character count and tokenizes per batch).
    """
    dim = model.get_embedding_dimension()
    out = np.empty((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    model.eval()
    tokenizer = model.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)
    encoded = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded}
    lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
    order = np.argsort(-lengths, kind="stable")
    pad_id, left = tokenizer.pad_token_id or 0, tokenizer.padding_side == "left"
    route = {"task": task} if task and any(isinstance(m, Router) for m in model.modules()) else {}
    bar = progress or tqdm(total=len(texts), desc="Encoding", unit="doc", disable=not show_progress)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        features = _pad_batch(encoded, rows, pad_id, left)
        features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out[rows] = model(features, **route)["sentence_embedding"].float().cpu().numpy()
        bar.update(len(rows))
    if progress is None:
        bar.close()
    return out


def encode_corpus(
    model: SentenceTransformer,
    dataset: BeirDataset,
    batch_size: int = 64,
    chunk_size: int = 16384,
    cache: CorpusEmbeddingCache | None = None,
    show_progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Doc ids and float32 embeddings of the whole corpus, in file order.

    The corpus is streamed in chunks (only one chunk's text is held at a time); within a chunk texts
    are length-sorted. With a cache the result is read back on the next call with the same model.
    """
    key = None
    if cache is not None:
        key = embedding_key(model, dataset)
        hit = cache.get(key)
        if hit is not None:
            logger.info("corpus embeddings for %s read from cache %s", dataset.name, cache.path(key))
            return hit
    total = dataset.corpus_size()
    doc_ids: list[str] = []
    parts: list[np.ndarray] = []
    with tqdm(total=total, desc=f"Encoding {dataset.name}", unit="doc", disable=not show_progress) as bar:
        for chunk in dataset.iter_corpus_chunks(chunk_size):
            doc_ids.extend(doc.doc_id for doc in chunk)
            parts.append(encode_texts(model, [doc.as_text() for doc in chunk], batch_size, progress=bar,
                                      task="document"))
    embeddings = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if cache is not None and key is not None:
        cache.put(key, doc_ids, embeddings)
    return doc_ids, embeddings


def embedding_key(model: SentenceTransformer, dataset: BeirDataset) -> EmbeddingKey:
    return EmbeddingKey(model_fingerprint(model), dataset.corpus_fingerprint(), model.max_seq_length,
                        pooling_mode(model))
