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
from ..index.faiss_index import DenseIndex, IndexMeta, index_meta_for
from ..models.backend_choice import announce, choose
from ..models.choices import AUTO
from ..models.embedding_cache import CorpusEmbeddingCache, EncoderFacts, EncoderMemo, queries_fingerprint
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
    """A retrieval function for ``evaluate_systems``: exact search with one encoder, loaded once, on first need.

    With the cache, corpus and query embeddings are read back from it; when both are there (a repeated
    evaluation) the encoder is not loaded at all: ``EncoderMemo`` gives the cache keys of a model folder
    loaded before. The numbers are the cold run's: the same float32 embeddings, the same exact search.

    With ``cache_pooled`` the cache holds the pooled embeddings (before any SB-MoE head) and the head is
    applied on top at each call, so evaluating the same model under several head modes, or several heads
    on one frozen encoder, encodes each corpus once.
    """
    cache = CorpusEmbeddingCache() if use_cache else None
    memo = EncoderMemo() if use_cache and model is None else None
    state: dict = {"model": model, "facts": None}

    def encoder() -> SentenceTransformer:
        if state["model"] is None:
            state["model"] = load_encoder(config)
        return state["model"]

    def facts() -> EncoderFacts:
        """The encoder's cache keys and index metadata: from the memo when it knows the folder, else loaded."""
        if state["facts"] is None or model is not None:  # a caller's model may change between calls
            known = memo.get(config) if memo is not None else None
            state["facts"] = known or EncoderFacts.of(encoder())
            if memo is not None and known is None:
                memo.put(config, state["facts"])
            elif known is not None and config.backend == AUTO:  # the line a load would print (load_encoder)
                announce(config.model, choose(AUTO, config.model, config.device))
        return state["facts"]

    def retrieve(dataset: BeirDataset, queries: dict[str, str], k: int) -> Run:
        if cache_pooled:
            return pooled_retrieve(dataset, queries, k)
        hit = cache.get(facts().key(dataset.corpus_fingerprint())) if cache is not None else None
        if hit is None:
            from ..models.encoding import encode_corpus  # torch: only when something is to be encoded

            hit = encode_corpus(encoder(), dataset, config.batch_size, cache=cache, show_progress=show_progress)
        doc_ids, embeddings = hit
        index = DenseIndex.from_embeddings(embeddings, doc_ids, index_meta(facts(), config.model))
        qids = list(queries)
        query_key = facts().key(queries_fingerprint(queries))
        query_hit = cache.get(query_key) if cache is not None else None
        if query_hit is not None and query_hit[0] == qids:
            query_embeddings = query_hit[1]
        else:
            from ..models.encoding import encode_texts

            query_embeddings = encode_texts(encoder(), [queries[q] for q in qids], config.batch_size, task="query")
            if cache is not None and qids:
                cache.put(query_key, qids, query_embeddings)
        return index.run(qids, query_embeddings, k, drop_self_hits=dataset.drop_self_hits)

    def pooled_retrieve(dataset: BeirDataset, queries: dict[str, str], k: int) -> Run:
        from ..index.retriever import Retriever
        from ..models.encoding import encode_corpus
        from ..models.pipeline import apply_after_pooling, pooling_prefix

        doc_ids, pooled = encode_corpus(pooling_prefix(encoder()), dataset, config.batch_size, cache=cache,
                                        show_progress=show_progress)
        index = DenseIndex.from_embeddings(apply_after_pooling(encoder(), pooled), doc_ids,
                                           index_meta_for(encoder(), config.model))
        return Retriever(encoder(), index, config.batch_size).search(queries, k, drop_self_hits=dataset.drop_self_hits)

    def describe() -> dict:
        """Provenance of the system: the encoder's fingerprint and settings, known without loading it."""
        known = facts()
        loaded = state["model"]
        return {"model": config.model, "fingerprint": known.model_fingerprint, "backend": known.backend,
                "backend_option": config.backend,
                "device": str(loaded.device) if loaded is not None else None, "pooling": config.pooling,
                "max_length": known.max_length, "normalize": config.normalize, "similarity": known.similarity,
                "similarity_overridden": config.similarity is not None, "prompts": known.prompts}

    retrieve.describe = describe  # type: ignore[attr-defined]
    retrieve.encoder_config = config  # type: ignore[attr-defined]
    return retrieve


def index_meta(facts: EncoderFacts, model_name: str, factory: str = "Flat") -> IndexMeta:
    """What ``index_meta_for`` records of a loaded model, from its facts (no weights needed)."""
    return IndexMeta(model=model_name, model_fingerprint=facts.document_fingerprint or facts.model_fingerprint,
                     pooling=facts.pooling,
                     dim=facts.dim, normalize=facts.normalize, count=0, max_length=facts.max_length, factory=factory,
                     backend=facts.backend, similarity=facts.similarity, prompts=dict(facts.prompts))


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

    run.__dict__.update(retrieve.__dict__)  # keep what the system carries (its model, its engine)
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
