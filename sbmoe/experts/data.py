"""Training data of a query-side expert: queries paired with rows of a fixed matrix of base-model document
embeddings (read from the embedding cache), one hard negative per query mined with the base model, and held-out
dev queries scored over their own corpus.

Only queries are encoded while an expert trains, so a step costs one pass over ~20-token texts, not documents.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sentence_transformers import SentenceTransformer

from ..data import BeirDataset, DataFormatError
from ..index.similarity import prepare_vectors
from ..models.declared import declared_similarity
from ..models.embedding_cache import CorpusEmbeddingCache, EncoderFacts, queries_fingerprint
from ..models.encoding import encode_corpus, encode_texts

logger = logging.getLogger(__name__)


@dataclass
class DomainCorpus:
    """One dataset's documents: ids and base embeddings prepared for the model's similarity."""

    name: str
    doc_ids: list[str]
    vectors: np.ndarray  # float32 (documents, dim)
    offset: int  # first row in the experts' joint document matrix


@dataclass
class ExpertData:
    """Pairs (query text, positive row, negative row or -1) over ``documents``, and dev queries per dataset."""

    queries: list[str]
    positives: np.ndarray  # int64 rows of ``documents``
    negatives: np.ndarray  # int64 rows of ``documents``, -1 where none was mined
    domains: np.ndarray  # int64 index into ``corpora`` of each pair
    corpora: list[DomainCorpus]
    dev: dict[str, tuple[dict[str, str], dict[str, dict[str, int]]]] = field(default_factory=dict)

    @property
    def documents(self) -> np.ndarray:
        return np.concatenate([c.vectors for c in self.corpora]) if len(self.corpora) > 1 else self.corpora[0].vectors

    def __len__(self) -> int:
        return len(self.queries)


def base_query_vectors(base: SentenceTransformer, texts: dict[str, str], batch_size: int,
                       cache: CorpusEmbeddingCache | None) -> np.ndarray:
    """The base model's query embeddings (raw), through the embedding cache: seeds and experts share them."""
    qids = list(texts)
    key = EncoderFacts.of(base).key(queries_fingerprint(texts)) if cache is not None else None
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is not None and hit[0] == qids:
        return np.asarray(hit[1])
    vectors = encode_texts(base, [texts[q] for q in qids], batch_size, task="query")
    if cache is not None and key is not None and qids:
        cache.put(key, qids, vectors)
    return vectors


def mine_negatives(query_vectors: np.ndarray, docs: np.ndarray, relevant: Sequence[set[int]], depth: int) -> np.ndarray:
    """Per query, the best-ranked document among the base model's top ``depth`` that is not relevant (-1: none)."""
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    _, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(depth, len(docs)))
    out = np.full(len(query_vectors), -1, dtype=np.int64)
    for i, (ranked, positives) in enumerate(zip(rows, relevant, strict=True)):
        out[i] = next((int(r) for r in ranked if r >= 0 and int(r) not in positives), -1)
    return out


def build_expert_data(base: SentenceTransformer, datasets: Sequence[str], split: str = "train",
                      negatives: str = "mined", mine_depth: int = 30, max_queries: int = 0, dev_queries: int = 200,
                      seed: int = 0, batch_size: int = 64, show_progress: bool = True,
                      use_cache: bool = True) -> ExpertData:
    """Pairs of every judged training query of ``datasets`` with each of its relevant documents; a seeded
    ``dev_queries`` of them per dataset are held out (the same for every expert with the same seed)."""
    similarity = declared_similarity(base)
    cache = CorpusEmbeddingCache() if use_cache else None
    corpora: list[DomainCorpus] = []
    texts: list[str] = []
    positives: list[int] = []
    mined: list[int] = []
    domains: list[int] = []
    dev: dict[str, tuple[dict[str, str], dict[str, dict[str, int]]]] = {}
    offset = 0
    for number, name in enumerate(datasets):
        dataset = BeirDataset.open(name)
        queries, qrels = dataset.load_split(split)
        doc_ids, raw = encode_corpus(base, dataset, batch_size, cache=cache, show_progress=show_progress)
        vectors = prepare_vectors(raw, similarity)
        corpora.append(DomainCorpus(dataset.name, list(doc_ids), vectors, offset))
        row_of = {d: r for r, d in enumerate(doc_ids)}
        judged = sorted(q for q, rels in qrels.items() if q in queries and any(v > 0 and d in row_of
                                                                                for d, v in rels.items()))
        if not judged:
            raise DataFormatError(f"{dataset.root}: no judged {split} query has a relevant document in the corpus")
        # per dataset: a dataset's dev and training queries are the same in its own expert and in the union's
        order = np.random.default_rng([seed, zlib.crc32(dataset.name.encode())]).permutation(len(judged))
        held = {judged[i] for i in order[:min(dev_queries, len(judged) // 5)]}
        train_ids = [judged[i] for i in order if judged[i] not in held]
        if max_queries:
            train_ids = train_ids[:max_queries]
        dev[dataset.name] = ({q: queries[q] for q in sorted(held)}, {q: qrels[q] for q in sorted(held)})
        relevant = [{row_of[d] for d, v in qrels[q].items() if v > 0 and d in row_of} for q in train_ids]
        negative_rows = np.full(len(train_ids), -1, dtype=np.int64)
        if negatives == "mined":
            query_vectors = prepare_vectors(base_query_vectors(base, {q: queries[q] for q in train_ids}, batch_size,
                                                               cache), similarity)
            negative_rows = mine_negatives(query_vectors, vectors, relevant, mine_depth)
        for qid, rows, negative in zip(train_ids, relevant, negative_rows, strict=True):
            for row in sorted(rows):
                texts.append(queries[qid])
                positives.append(offset + row)
                mined.append(offset + int(negative) if negative >= 0 else -1)
                domains.append(number)
        offset += len(doc_ids)
        logger.info("%s: %d training pairs, %d dev queries", dataset.name, len(train_ids), len(held))
    return ExpertData(texts, np.asarray(positives, dtype=np.int64), np.asarray(mined, dtype=np.int64),
                      np.asarray(domains, dtype=np.int64), corpora, dev)
