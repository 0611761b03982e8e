"""Dense retrieval: an encoder and a FAISS index built with it, searched with query texts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from ..data import BeirDataset, load_queries
from ..models.declared import declared_similarity
from ..models.embedding_cache import CorpusEmbeddingCache
from ..models.encoder import EncoderConfig, load_encoder
from ..models.encoding import encode_corpus, encode_texts
from ..models.fingerprint import document_fingerprint
from ..runs import DEFAULT_DEPTH, Run, SelfHits, write_trec_run
from .faiss_index import DenseIndex, IndexMismatchError, index_meta_for

logger = logging.getLogger(__name__)


class Retriever:
    """An encoder and an index built with it. ``search`` maps queries to ranked doc ids and scores, under the
    similarity the index was built for (which must be the one the encoder declares, or was told to use)."""

    def __init__(self, model: SentenceTransformer, index: DenseIndex, batch_size: int = 64) -> None:
        index.check_encoder(document_fingerprint(model), model.get_embedding_dimension(), declared_similarity(model))
        self.model = model
        self.index = index
        self.batch_size = batch_size

    @classmethod
    def from_index(
        cls, index_dir: Path, model: SentenceTransformer | EncoderConfig | str | None = None,
        backend: str | None = None, similarity: str | None = None, query_prompt: str | None = None,
    ) -> Retriever:
        """Open an index folder; the encoder, its backend, its query prompt and its similarity default to those
        recorded in meta.json (an index built with ``--similarity dot`` is searched with dot). A similarity
        given here, or declared by a loaded model passed in, that differs from the index's is one line."""
        index = DenseIndex.load(Path(index_dir))
        if similarity is not None and similarity != index.meta.similarity:  # before loading any weights
            raise IndexMismatchError(f"{index_dir}: the index was built for {index.meta.similarity} similarity "
                                     f"(meta.json), not {similarity}; re-index with --similarity {similarity}")
        if model is None or isinstance(model, str):
            model = EncoderConfig(model=model or index.meta.model, backend=backend or index.meta.backend)
        if isinstance(model, EncoderConfig):
            recorded = index.meta.prompts.get("query") if index.meta.prompts else None
            model = replace(model, similarity=next(s for s in (similarity, model.similarity, index.meta.similarity)
                                                   if s is not None),
                            query_prompt=next((p for p in (query_prompt, model.query_prompt, recorded)
                                               if p is not None), None))
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
        self, queries: Mapping[str, str] | Sequence[str] | str, k: int = DEFAULT_DEPTH,
        drop_self_hits: SelfHits = False,
    ) -> Run:
        """Top-``k`` documents for each query as {query id: {doc id: score}}.

        One query string, or a plain list of them, gets ids "0", "1", .... With ``drop_self_hits`` a document
        whose id equals the query id is removed and one more hit is fetched in its place (BEIR's convention);
        a set of query ids limits that to those queries.
        """
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        if not queries:
            return {}
        qids = list(queries)
        return self.index.run(qids, self.encode_queries([queries[q] for q in qids]), k, drop_self_hits)


def search_to_trec(index_dir: Path, queries: str, output: Path, k: int = DEFAULT_DEPTH, split: str | None = None,
                   model: str | None = None, search_params: dict[str, int] | None = None,
                   batch_size: int = EncoderConfig.batch_size, drop_self_hits: bool | None = None,
                   backend: str | None = None, similarity: str | None = None,
                   query_prompt: str | None = None) -> Run:
    """``sbmoe search``: queries (a file, or a dataset's judged ones) against an index folder -> TREC run.

    The encoder defaults to the one named in the index's meta.json; ``search_params`` (nprobe, efSearch)
    override the stored ones; ``drop_self_hits`` overrides the dataset's self-hit rule; ``backend`` (torch,
    onnx, onnx-int8) the one that built the index; ``similarity`` and ``query_prompt`` the recorded ones.
    """
    texts, drop_self_hits = load_queries(queries, split, drop_self_hits)
    retriever = Retriever.from_index(index_dir, model, backend, similarity, query_prompt)
    retriever.batch_size = batch_size
    retriever.index.apply_search_params(search_params or {})
    run = retriever.search(texts, k=k, drop_self_hits=drop_self_hits)
    write_trec_run(run, output, tag=f"sbmoe-{Path(retriever.index.meta.model).name}")
    return run
