"""BEIR-format datasets: corpus.jsonl streamed, queries.jsonl and qrels/<split>.tsv validated.

Malformed input fails with the file and line; judgements that name unknown documents or queries are
skipped with one counted warning, which is what BEIR users expect from a partially filtered qrels file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .registry import dataset_info, resolve_dataset

logger = logging.getLogger(__name__)

# Bump when the way a document's text is built changes: it is part of the embedding cache key.
DOC_TEXT_FORMAT = "beir-title-space-text-v1"


class DataFormatError(ValueError):
    """Malformed dataset file; the message names the file and the line."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    def as_text(self) -> str:
        """Title and body joined by one space, stripped: BEIR's convention for dense encoders."""
        return (self.title + " " + self.text).strip()


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line, with precise errors."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{line_no}: expected a JSON object")
            yield line_no, obj


def _record_id(path: Path, line_no: int, obj: dict) -> str:
    raw = obj.get("_id")
    if raw is None or str(raw) == "":
        raise DataFormatError(f"{path}:{line_no}: missing '_id'")
    return str(raw)


def _text_field(path: Path, line_no: int, obj: dict, key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{line_no}: field {key!r} must be a string")
    return value


def read_id_texts(path: Path) -> dict[str, str]:
    """{_id: text} from a JSONL file of objects (BEIR queries.jsonl)."""
    return {_record_id(path, n, obj): _text_field(path, n, obj, "text") for n, obj in _iter_jsonl(path)}


def read_queries(path: Path) -> dict[str, str]:
    """Queries from BEIR JSONL (``_id``, ``text``) or TSV (``query id<TAB>text``)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        queries = read_id_texts(path)
    else:
        queries = {}
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                qid, sep, text = line.rstrip("\n").partition("\t")
                if not sep or not qid:
                    raise DataFormatError(f"{path}:{line_no}: expected 'query id<TAB>text'")
                queries[qid] = text
    if not queries:
        raise DataFormatError(f"{path}: no queries")
    return queries


@dataclass
class BeirDataset:
    """A BEIR folder. Nothing is read until asked; the corpus is only ever streamed."""

    root: Path
    name: str
    drop_self_hits: bool = True
    default_split: str = "test"

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, download: bool = True) -> BeirDataset:
        root = resolve_dataset(name_or_path, download=download)
        info = dataset_info(Path(name_or_path).name if Path(name_or_path).is_dir() else str(name_or_path))
        return cls(root=root, name=info.name, drop_self_hits=info.drop_self_hits,
                   default_split=info.default_split)

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def queries_path(self) -> Path:
        return self.root / "queries.jsonl"

    def qrels_path(self, split: str) -> Path:
        return self.root / "qrels" / f"{split}.tsv"

    def iter_corpus(self) -> Iterator[Document]:
        """Stream documents in file order; duplicate ids and an empty corpus are errors."""
        seen: set[str] = set()
        for line_no, obj in _iter_jsonl(self.corpus_path):
            doc_id = _record_id(self.corpus_path, line_no, obj)
            if doc_id in seen:
                raise DataFormatError(f"{self.corpus_path}:{line_no}: duplicate _id {doc_id!r}")
            seen.add(doc_id)
            yield Document(doc_id, _text_field(self.corpus_path, line_no, obj, "title"),
                           _text_field(self.corpus_path, line_no, obj, "text"))
        if not seen:
            raise DataFormatError(f"{self.corpus_path}: corpus is empty")

    def iter_corpus_chunks(self, chunk_size: int) -> Iterator[list[Document]]:
        """Stream the corpus as lists of at most ``chunk_size`` documents."""
        chunk: list[Document] = []
        for doc in self.iter_corpus():
            chunk.append(doc)
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def corpus_size(self) -> int:
        """Number of non-blank lines in corpus.jsonl (cheap; used for progress bars)."""
        if not self.corpus_path.is_file():
            raise DataFormatError(f"{self.corpus_path}: file not found")
        with open(self.corpus_path, "rb") as handle:
            return sum(1 for line in handle if line.strip())

    def doc_ids(self) -> set[str]:
        return {doc.doc_id for doc in self.iter_corpus()}

    def corpus_fingerprint(self) -> str:
        """sha256 of corpus.jsonl's bytes and the document text format."""
        digest = hashlib.sha256(DOC_TEXT_FORMAT.encode())
        with open(self.corpus_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def load_queries(self, split: str | None = None) -> dict[str, str]:
        """All queries, or only those judged in ``split`` (in file order)."""
        queries = read_id_texts(self.queries_path)
        if split is None:
            return queries
        judged = self.load_qrels(split, known_queries=set(queries))
        return {qid: text for qid, text in queries.items() if qid in judged}

    def load_qrels(
        self,
        split: str | None = None,
        known_docs: set[str] | None = None,
        known_queries: set[str] | None = None,
    ) -> dict[str, dict[str, int]]:
        """qrels as {query id: {doc id: relevance}}; unknown ids are skipped with a counted warning."""
        path = self.qrels_path(split or self.default_split)
        if not path.is_file():
            available = sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))
            raise DataFormatError(f"{path}: file not found (splits here: {', '.join(available) or 'none'})")
        qrels: dict[str, dict[str, int]] = {}
        unknown_docs = unknown_queries = 0
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                fields = line.rstrip("\n").split("\t")
                if not line.strip():
                    continue
                if line_no == 1 and fields[0] == "query-id":
                    continue
                if len(fields) != 3:
                    raise DataFormatError(f"{path}:{line_no}: expected 3 tab-separated fields, got {len(fields)}")
                qid, doc_id, score = fields
                try:
                    relevance = int(float(score))
                except ValueError:
                    raise DataFormatError(f"{path}:{line_no}: relevance {score!r} is not a number") from None
                if known_docs is not None and doc_id not in known_docs:
                    unknown_docs += 1
                    continue
                if known_queries is not None and qid not in known_queries:
                    unknown_queries += 1
                    continue
                qrels.setdefault(qid, {})[doc_id] = relevance
        if unknown_docs:
            logger.warning("%s: skipped %d judgements naming documents not in the corpus", path, unknown_docs)
        if unknown_queries:
            logger.warning("%s: skipped %d judgements naming queries not in queries.jsonl", path, unknown_queries)
        if not qrels:
            raise DataFormatError(f"{path}: no usable judgements")
        return qrels

    def load_split(self, split: str | None = None) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """Queries judged in ``split`` and their qrels, validated against the corpus and query ids."""
        split = split or self.default_split
        all_queries = self.load_queries()
        qrels = self.load_qrels(split, known_docs=self.doc_ids(), known_queries=set(all_queries))
        queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
        return queries, qrels


def load_queries(source: str | os.PathLike, split: str | None = None) -> tuple[dict[str, str], bool]:
    """Queries from a file (.jsonl or .tsv), or a dataset's judged queries in ``split``.

    Returns the queries and whether self-hits are to be dropped (a dataset's own rule; never for a file).
    """
    if Path(source).is_file():
        return read_queries(Path(source)), False
    dataset = BeirDataset.open(source)
    return dataset.load_split(split)[0], dataset.drop_self_hits
