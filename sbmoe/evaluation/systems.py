"""Retrieval systems for evaluation: dense encoders, BM25 and fused hybrids, each a function
(dataset, queries, k) -> run, memoised so that a system used alone and inside a hybrid retrieves once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..bm25.engines import BM25Config, Bm25sIndex, LuceneBM25, bm25_index_dir, engine_for
from ..bm25.fusion import fuse
from ..data import BeirDataset
from ..index.faiss_index import DenseIndex, index_meta_for
from ..models.embedding_cache import CorpusEmbeddingCache
from ..models.encoder import EncoderConfig, load_encoder
from ..runs import Run

if TYPE_CHECKING:  # the encoder stack loads when a dense system first runs, not with SystemsConfig
    from sentence_transformers import SentenceTransformer

# A system retrieves: (dataset, queries, k) -> run.
SystemFn = Callable[[BeirDataset, dict[str, str], int], Run]


def dense_system(
    config: EncoderConfig,
    use_cache: bool = True,
    show_progress: bool = True,
    model: SentenceTransformer | None = None,
    cache_pooled: bool = False,
):
    """A retrieval function for ``evaluate_systems``: exact search with one encoder, loaded once.

    With ``cache_pooled`` the cache holds the pooled embeddings (before any SB-MoE head) and the head is
    applied on top at each call, so evaluating the same model under several head modes, or several heads
    on one frozen encoder, encodes each corpus once.
    """
    from ..index.retriever import Retriever
    from ..models.encoding import encode_corpus
    from ..models.pipeline import apply_after_pooling, pooling_prefix

    model = model if model is not None else load_encoder(config)
    cache = CorpusEmbeddingCache() if use_cache else None
    prefix = pooling_prefix(model) if cache_pooled else None

    def retrieve(dataset: BeirDataset, queries: dict[str, str], k: int) -> Run:
        if prefix is None:
            retriever = Retriever.from_dataset(model, dataset, config.batch_size, cache, show_progress,
                                               config.model)
        else:
            doc_ids, pooled = encode_corpus(prefix, dataset, config.batch_size, cache=cache,
                                            show_progress=show_progress)
            index = DenseIndex.from_embeddings(apply_after_pooling(model, pooled), doc_ids,
                                               index_meta_for(model, config.model))
            retriever = Retriever(model, index, config.batch_size)
        return retriever.search(queries, k, drop_self_hits=dataset.drop_self_hits)

    return retrieve


def bm25_system(config: BM25Config | None = None):
    """A retrieval function for ``evaluate_systems``; Lucene indexes are built once and cached."""
    config = config or BM25Config()
    engine = engine_for(config)

    def retrieve(dataset: BeirDataset, queries: dict[str, str], k: int) -> Run:
        if engine == "pyserini":
            index_dir = bm25_index_dir(dataset, config)
            if not index_dir.exists():
                LuceneBM25.build(dataset, index_dir, config.threads)
            searcher = LuceneBM25(index_dir, config)
        else:
            searcher = Bm25sIndex(dataset, config)
        return searcher.search(queries, k, drop_self_hits=dataset.drop_self_hits)

    retrieve.engine = engine  # type: ignore[attr-defined]
    return retrieve


def memoized(retrieve: SystemFn) -> SystemFn:
    """``retrieve`` computed once per dataset (the queries of one evaluation are fixed per dataset)."""
    runs: dict[str, Run] = {}

    def run(dataset: BeirDataset, queries: dict[str, str], k: int) -> Run:
        if dataset.name not in runs:
            runs[dataset.name] = retrieve(dataset, queries, k)
        return runs[dataset.name]

    return run


def hybrid_system(first: SystemFn, second: SystemFn, fusion: str = "rrf", alpha: float = 0.5) -> SystemFn:
    """Fuse two systems' runs (reciprocal rank or convex min-max mix) to depth k."""
    return lambda dataset, queries, k: fuse(first(dataset, queries, k), second(dataset, queries, k), fusion,
                                            alpha, depth=k)


@dataclass
class SystemsConfig:
    """Which systems one evaluation compares: dense models, BM25, and a hybrid of the first model."""

    models: list[str] = field(default_factory=lambda: ["minilm"])
    bm25: bool = False
    hybrid: str | None = None
    fusion: str = "rrf"
    alpha: float = 0.5
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bm25_config: BM25Config = field(default_factory=BM25Config)
    use_cache: bool = True
    show_progress: bool | None = None


def build_systems(config: SystemsConfig) -> dict[str, SystemFn]:
    """Name -> memoised system: every model, ``bm25`` when asked (or used by the hybrid), then the hybrid."""
    progress = sys.stderr.isatty() if config.show_progress is None else config.show_progress

    def dense(name: str) -> SystemFn:
        encoder = replace(config.encoder, model=name)
        return memoized(dense_system(encoder, use_cache=config.use_cache, show_progress=progress))

    systems = {name: dense(name) for name in config.models}
    if config.bm25 or config.hybrid == "bm25":
        systems["bm25"] = memoized(bm25_system(config.bm25_config))
    if config.hybrid:
        other = systems.get(config.hybrid) or dense(config.hybrid)
        first = config.models[0]
        systems[f"{first}+{config.hybrid}:{config.fusion}"] = hybrid_system(systems[first], other, config.fusion,
                                                                           config.alpha)
    return systems
