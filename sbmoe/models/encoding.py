"""Embedding text with an encoder: length-sorted batches under a token budget, and whole corpora through the
embedding cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Router
from tqdm.auto import tqdm

from ..data import BeirDataset
from ..memory import HeapGuard, trim_heap
from .declared import declared_similarity, task_prompt
from .embedding_cache import CorpusEmbeddingCache, EmbeddingKey
from .fingerprint import document_fingerprint
from .pipeline import pooling_mode

logger = logging.getLogger(__name__)


MAX_BATCH_TOKENS = 2048  # padded tokens per forward pass: bounds activation memory (8 x 256-token docs;
# 4,096 cost 70 MB more peak RSS with ONNX Runtime, 33 MB with torch, on 800 SciFact documents)
TOKENIZE_BLOCK = 1024  # texts tokenized per call; token ids are then kept as flat int32 arrays


@dataclass
class TokenizedTexts:
    """Token ids of many texts as one flat int32 array plus offsets (a few bytes per token, where the
    tokenizer's Python lists take ~100); attention masks are all ones before padding, so none are kept."""

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def build(cls, tokenizer, texts: Sequence[str], max_length: int | None) -> TokenizedTexts:
        """Tokenize in blocks of ``TOKENIZE_BLOCK``, truncated exactly as ``model.preprocess`` does."""
        ids: list[np.ndarray] = []
        types: list[np.ndarray] = []
        lengths: list[int] = []
        with_types = True
        # the tokenizer's freed blocks would otherwise stay with the process (memory.py); a few texts (queries, a
        # served request) leave little, and a trim would also return the activations the next batch reuses
        trim = trim_heap if len(texts) >= TOKENIZE_BLOCK else lambda: False
        for start in range(0, len(texts), TOKENIZE_BLOCK):
            encoded = tokenizer(list(texts[start:start + TOKENIZE_BLOCK]), truncation=True, max_length=max_length)
            with_types = with_types and "token_type_ids" in encoded
            for row, row_ids in enumerate(encoded["input_ids"]):
                ids.append(np.asarray(row_ids, dtype=np.int32))
                lengths.append(len(row_ids))
                if with_types:
                    types.append(np.asarray(encoded["token_type_ids"][row], dtype=np.int8))
            del encoded
            trim()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_types = np.concatenate(types) if with_types and types else None
        tokens = cls(np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets, flat_types)
        del ids, types
        trim()
        return tokens

    def pad(self, rows: np.ndarray, pad_id: int, left: bool, prompt_length: int | None = None) -> dict:
        """Padded tensors for ``rows``, as the tokenizer's own padding would make them (with the prompt's token
        count where a prompt was prepended: a Pooling with ``include_prompt=False`` leaves those tokens out)."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        blocks = {"input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
                  "attention_mask": np.zeros((len(rows), width), dtype=np.int64)}
        if self.type_ids is not None:
            blocks["token_type_ids"] = np.zeros((len(rows), width), dtype=np.int64)
        for out_row, (i, length) in enumerate(zip(rows, lengths, strict=True)):
            span = slice(width - length, width) if left else slice(0, length)
            source = slice(self.offsets[i], self.offsets[i + 1])
            blocks["input_ids"][out_row, span] = self.ids[source]
            blocks["attention_mask"][out_row, span] = 1
            if self.type_ids is not None:
                blocks["token_type_ids"][out_row, span] = self.type_ids[source]
        features = {"modality": "text", **{key: torch.from_numpy(block) for key, block in blocks.items()}}
        if prompt_length is not None:
            features["prompt_length"] = prompt_length
        return features


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens a prompt takes at the start of a text, without the trailing special token (as
    sentence-transformers counts them for prompt-excluding pooling)."""
    ids = tokenizer([prompt])["input_ids"][0]
    return len(ids) - 1 if ids and ids[-1] in tokenizer.all_special_ids else len(ids)


def token_budget_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Row indices, longest first, cut into batches of at most ``batch_size`` rows and ``max_tokens`` padded
    tokens (rows x longest row), so long documents come in smaller batches and short ones in full batches."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(batch_size, max_tokens // max(int(lengths[order[start]]), 1)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


@torch.inference_mode()
def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = False,
    progress: tqdm | None = None,
    task: str | None = None,
    max_tokens: int = MAX_BATCH_TOKENS,
    prompt: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` (float32, input order), batching length-sorted texts by a token budget.

    ``task`` ("query" or "document") picks the prompt the model declares for it (``prompt`` overrides it) and
    the route of a model with a sentence-transformers Router (separate SB-MoE heads for queries and
    documents), exactly as ``encode_query`` / ``encode_document`` do.

    The texts are tokenized once (truncated to ``max_seq_length``, exactly as ``model.preprocess`` does)
    and each batch is padded here, so embeddings equal ``model.encode``'s; only the batching differs
    (sentence-transformers sorts by character count, tokenizes per batch and uses fixed batch sizes).
    """
    dim = model.get_embedding_dimension()
    out = np.empty((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    if any(m.training for m in model.modules()):  # eval() sets an attribute on every module: ms per call
        model.eval()
    tokenizer = model.tokenizer
    prompt = task_prompt(model, task) if prompt is None else prompt
    if prompt:
        texts = [prompt + text for text in texts]
    prompt_length = prompt_token_count(tokenizer, prompt) if prompt else None
    tokens = TokenizedTexts.build(tokenizer, texts, model.max_seq_length)
    pad_id, left = tokenizer.pad_token_id or 0, tokenizer.padding_side == "left"
    takes_task = any(isinstance(m, Router) or "task" in getattr(m, "forward_kwargs", ()) for m in model.children())
    route = {"task": task} if task and takes_task else {}  # a Router or a routed encoder reads it (top level)
    bar = progress or tqdm(total=len(texts), desc="Encoding", unit="doc", disable=not show_progress)
    guard = HeapGuard()  # freed activations stay for the next batch; a trim only if RSS really grew (memory.py)
    for rows in token_budget_batches(tokens.lengths, batch_size, max_tokens):
        features = tokens.pad(rows, pad_id, left, prompt_length)
        features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out[rows] = model(features, **route)["sentence_embedding"].float().cpu().numpy()
        bar.update(len(rows))
        guard.check()
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
            trim_heap()  # a stage boundary: the chunk's texts and activations go back to the system
    embeddings = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if cache is not None and key is not None:
        cache.put(key, doc_ids, embeddings)
    return doc_ids, embeddings


def embedding_key(model: SentenceTransformer, dataset: BeirDataset) -> EmbeddingKey:
    return EmbeddingKey(document_fingerprint(model), dataset.corpus_fingerprint(), model.max_seq_length,
                        pooling_mode(model), task_prompt(model, "document"), declared_similarity(model))
