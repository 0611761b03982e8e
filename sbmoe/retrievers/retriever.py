"""Dense retrieval: encode a corpus (through the embedding cache), index it, search it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from ..data import BeirDataset
from ..runs import Run
from .embedding_cache import CorpusEmbeddingCache, EmbeddingKey
from .encoder import (
    EncoderConfig,
    apply_after_pooling,
    encode_texts,
    load_encoder,
    normalizes,
    pooling_mode,
    pooling_prefix,
)
from .fingerprint import model_fingerprint
from .index import DenseIndex, IndexMeta
from .shards import SHARD_DTYPES, ShardManifest, encode_to_shards, index_from_shards, iter_shards

logger = logging.getLogger(__name__)


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


@contextmanager
def corpus_encoder(model: SentenceTransformer, batch_size: int,
                   devices: Sequence[str] = ()) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """A texts -> embeddings function: in this process, or over several devices through
    sentence-transformers' multi-process pool (``["cuda:0", "cuda:1"]``, ``["cpu", "cpu"]``)."""
    if len(devices) <= 1:
        if devices:
            model.to(devices[0])
        yield lambda texts: encode_texts(model, texts, batch_size, task="document")
        return
    pool = model.start_multi_process_pool(list(devices))
    try:
        yield lambda texts: np.asarray(model.encode_document(texts, pool=pool, batch_size=batch_size),
                                       dtype=np.float32)
    finally:
        model.stop_multi_process_pool(pool)


def index_meta_for(model: SentenceTransformer, model_name: str, factory: str = "Flat") -> IndexMeta:
    return IndexMeta(
        model=model_name,
        model_fingerprint=model_fingerprint(model),
        pooling=pooling_mode(model),
        dim=model.get_embedding_dimension(),
        normalize=normalizes(model),
        count=0,
        max_length=model.max_seq_length,
        factory=factory,
    )


@dataclass
class IndexConfig:
    """Arguments of ``sbmoe index``."""

    dataset: str
    output: Path
    encoder: EncoderConfig
    factory: str = "Flat"
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 50_000
    shard_dtype: str = "float32"
    devices: tuple[str, ...] = ()
    keep_shards: bool = False
    use_cache: bool = True
    overwrite: bool = False
    show_progress: bool = True

    @property
    def shard_dir(self) -> Path:
        return Path(f"{self.output}.shards")


def build_index(config: IndexConfig, model: SentenceTransformer | None = None) -> DenseIndex:
    """Encode ``config.dataset``'s corpus chunk by chunk into shards beside ``config.output``, build the
    index from them, and write the index folder atomically.

    A rerun after a kill skips the complete shards. With the embedding cache, a corpus already encoded
    by the same model is indexed straight from the cache, and a fresh float32 encoding fills the cache.
    """
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    if config.shard_dtype not in SHARD_DTYPES:
        raise ValueError(f"unknown shard dtype {config.shard_dtype!r}; choose one of {', '.join(SHARD_DTYPES)}")
    if config.chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {config.chunk_size}")
    dataset = BeirDataset.open(config.dataset)
    model = model if model is not None else load_encoder(config.encoder)
    meta = index_meta_for(model, config.encoder.model, config.factory)
    meta.corpus_fingerprint = dataset.corpus_fingerprint()
    meta.build_params, meta.search_params = dict(config.build_params), dict(config.search_params)
    cache = CorpusEmbeddingCache() if config.use_cache else None
    key = embedding_key(model, dataset) if cache is not None else None
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is not None:
        index = DenseIndex.from_embeddings(hit[1], hit[0], meta)
    else:
        manifest = ShardManifest(meta.model_fingerprint, meta.corpus_fingerprint, config.chunk_size,
                                 config.shard_dtype, meta.dim)
        with corpus_encoder(model, config.encoder.batch_size, config.devices) as encode:
            count = encode_to_shards(dataset, config.shard_dir, manifest, encode, config.show_progress)
        index = index_from_shards(config.shard_dir, count, manifest, meta)
        if cache is not None and key is not None and config.shard_dtype == "float32":
            cache.put_stream(key, iter_shards(config.shard_dir, count, manifest), index.meta.count, meta.dim)
    index.save(output, overwrite=config.overwrite)
    if not config.keep_shards:
        shutil.rmtree(config.shard_dir, ignore_errors=True)
    return index


class Retriever:
    """An encoder and an index built with it. ``search`` maps queries to ranked doc ids and scores."""

    def __init__(self, model: SentenceTransformer, index: DenseIndex, batch_size: int = 64) -> None:
        index.check_encoder(model_fingerprint(model), model.get_embedding_dimension())
        self.model = model
        self.index = index
        self.batch_size = batch_size

    @classmethod
    def from_index(
        cls, index_dir: Path, model: SentenceTransformer | EncoderConfig | str | None = None
    ) -> Retriever:
        """Open an index folder; the encoder defaults to the one named in its meta.json."""
        index = DenseIndex.load(Path(index_dir))
        if model is None:
            model = EncoderConfig(model=index.meta.model)
        if isinstance(model, str):
            model = EncoderConfig(model=model)
        if isinstance(model, EncoderConfig):
            batch_size = model.batch_size
            model = load_encoder(model)
        else:
            batch_size = 64
        return cls(model, index, batch_size)

    @classmethod
    def from_dataset(
        cls,
        model: SentenceTransformer,
        dataset: BeirDataset,
        batch_size: int = 64,
        cache: CorpusEmbeddingCache | None = None,
        show_progress: bool = True,
        model_name: str = "model",
    ) -> Retriever:
        """An in-memory exact (Flat) index over ``dataset``'s corpus."""
        doc_ids, embeddings = encode_corpus(model, dataset, batch_size, cache=cache, show_progress=show_progress)
        index = DenseIndex.from_embeddings(embeddings, doc_ids, index_meta_for(model, model_name))
        return cls(model, index, batch_size)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.model, texts, self.batch_size, task="query")

    def search(
        self, queries: Mapping[str, str] | Sequence[str], k: int = 100, drop_self_hits: bool = False
    ) -> Run:
        """Top-``k`` documents for each query as {query id: {doc id: score}}.

        A plain list of query strings gets ids "0", "1", .... With ``drop_self_hits`` a document whose
        id equals the query id is removed and one more hit is fetched in its place (BEIR's convention).
        """
        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        if not queries:
            return {}
        qids = list(queries)
        embeddings = self.encode_queries([queries[q] for q in qids])
        scores, ids = self.index.search(embeddings, k + 1 if drop_self_hits else k)
        run: Run = {}
        for qid, row_scores, row_ids in zip(qids, scores, ids, strict=True):
            hits = {}
            for doc_id, score in zip(row_ids, row_scores, strict=False):
                if drop_self_hits and doc_id == qid:
                    continue
                hits[doc_id] = float(score)
                if len(hits) == k:
                    break
            run[qid] = hits
        return run


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
