"""Queries typed by a person against an index folder: ranked hits with the title and a snippet of each document.

``sbmoe search --query`` prints these (or ``--json``). The documents come from the corpus the index was built
from (``dataset`` in meta.json, or one given), read by row: FAISS rows follow the corpus file's order, so a
hit's row is its line among the corpus's non-blank lines, found through the cached line index, without a scan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import BeirDataset, DataFormatError
from ..data.line_index import LineIndex
from .faiss_index import IndexMismatchError

logger = logging.getLogger(__name__)

SNIPPET_CHARS = 200


@dataclass
class Hit:
    rank: int
    score: float
    doc_id: str
    title: str | None = None  # None when the corpus is not at hand
    snippet: str | None = None


@dataclass
class QueryHits:
    query: str
    hits: list[Hit]


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The text on one line, cut at a word boundary near ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + " ..."


class CorpusLookup:
    """Title and text of documents by FAISS row, read from the corpus file the index was built from."""

    def __init__(self, dataset: BeirDataset) -> None:
        self.dataset = dataset
        self.lines = LineIndex(dataset.corpus_path)

    @classmethod
    def for_index(cls, meta_dataset: str | None, corpus_fingerprint: str | None,
                  dataset: str | None = None) -> CorpusLookup | None:
        """The lookup for an index's corpus; None (with a warning) when it is not here or is not that corpus."""
        name = dataset or meta_dataset
        if name is None:
            logger.warning("the index does not name its corpus (built before sbmoe recorded it): pass --dataset "
                           "to show titles and texts")
            return None
        try:
            opened = BeirDataset.open(name, download=False)
        except (DataFormatError, FileNotFoundError, ValueError) as exc:
            logger.warning("corpus %s not available (%s): hits shown without titles", name, exc)
            return None
        if corpus_fingerprint is not None and opened.corpus_fingerprint() != corpus_fingerprint:
            raise IndexMismatchError(f"{name}: not the corpus this index was built from (its corpus.jsonl differs)")
        return cls(opened)

    def documents(self, rows: Sequence[int], doc_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(title, text) of each row; a row whose line is not the expected document is a format error."""
        out = []
        for row, doc_id, raw in zip(rows, doc_ids, self.lines.read(rows), strict=True):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                record = {}
            if str(record.get("_id")) != doc_id:
                raise DataFormatError(f"{self.dataset.corpus_path}: row {row} is not document {doc_id!r}; the "
                                      "file changed since it was indexed")
            out.append((str(record.get("title") or ""), str(record.get("text") or "")))
        return out


def search_queries(index_dir: Path, queries: Sequence[str], k: int = 10, model: str | None = None,
                   search_params: dict[str, int] | None = None, dataset: str | None = None,
                   backend: str | None = None, batch_size: int | None = None, similarity: str | None = None,
                   query_prompt: str | None = None) -> list[QueryHits]:
    """Each query's top ``k`` hits in an index folder, with titles and snippets when the corpus is at hand.

    The encoder (meta.json's unless ``model`` says otherwise) loads once for all queries; the ranking is
    ``Retriever.search``'s.
    """
    from .retriever import Retriever

    if not queries or any(not q.strip() for q in queries):
        raise ValueError("--query needs a non-empty text")
    if k < 1:
        raise ValueError(f"-k must be positive, got {k}")
    retriever = Retriever.from_index(index_dir, model, backend, similarity, query_prompt)
    if batch_size is not None:
        retriever.batch_size = batch_size
    retriever.index.apply_search_params(search_params or {})
    meta = retriever.index.meta
    lookup = CorpusLookup.for_index(meta.dataset, meta.corpus_fingerprint, dataset)
    run = retriever.search(list(queries), k=k)
    row_of = {doc_id: row for row, doc_id in enumerate(retriever.index.doc_ids)}
    results = []
    for qid, text in enumerate(queries):
        ranked = list(run[str(qid)].items())
        hits = [Hit(rank, score, doc_id) for rank, (doc_id, score) in enumerate(ranked, start=1)]
        if lookup is not None and hits:
            documents = lookup.documents([row_of[h.doc_id] for h in hits], [h.doc_id for h in hits])
            for hit, (title, body) in zip(hits, documents, strict=True):
                hit.title, hit.snippet = title, snippet(body)
        results.append(QueryHits(text, hits))
    return results


def format_hits(results: Sequence[QueryHits]) -> str:
    """A ranked list per query: rank, score, doc id and title on one line, the snippet indented below."""
    blocks = []
    for result in results:
        lines = [f"query: {result.query}"]
        width = max((len(h.doc_id) for h in result.hits), default=0)
        for hit in result.hits:
            title = f"  {hit.title}" if hit.title else ""
            lines.append(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.doc_id:<{width}}{title}")
            if hit.snippet:
                lines.append(f"{'':>16}{hit.snippet}")
        if not result.hits:
            lines.append("     (no hits)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def hits_json(results: Sequence[QueryHits]) -> str:
    return json.dumps([{"query": r.query, "hits": [asdict(h) for h in r.hits]} for r in results],
                      ensure_ascii=False, indent=2)

