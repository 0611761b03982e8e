"""BEIR-format datasets: corpus.jsonl streamed, queries.jsonl and qrels/<split>.tsv validated.

Malformed input fails with one line naming the file, the line and the field: bytes that are not UTF-8,
an ``_id`` that is not a string or an integer, a duplicate id, a missing ``text``, an empty corpus.
Judgements naming queries that are not in queries.jsonl are skipped, judgements naming documents that
are not in the corpus are kept (the query still counts, its document can never be retrieved: what BEIR
and trec_eval score), each with one counted warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..runs import SelfHits
from .document import Document
from .registry import dataset_info, resolve_dataset
from .self_hits import decide_self_hits

logger = logging.getLogger(__name__)

# Bump when the way a document's text is built changes: it is part of the embedding cache key.
DOC_TEXT_FORMAT = "beir-title-space-text-v1"


class DataFormatError(ValueError):
    """Malformed dataset file; the message names the file and the line."""


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of each non-blank line; bytes that are not UTF-8 fail with file and line."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                      f"column {exc.start + 1})") from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield line_no, line.rstrip("\r\n")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line, with precise errors."""
    for line_no, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{line_no}: expected a JSON object")
        yield line_no, obj


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", bool: "a boolean", float: "a number with a fraction"}
    return kinds.get(type(value), type(value).__name__)


def _record_id(path: Path, line_no: int, obj: dict) -> str:
    """The ``_id`` as a string: a JSON string or integer (a list, object, boolean or float is refused)."""
    raw = obj.get("_id")
    if raw is None or raw == "":
        raise DataFormatError(f"{path}:{line_no}: missing '_id'")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise DataFormatError(f"{path}:{line_no}: field '_id' must be a string or an integer, not {_json_kind(raw)}")
    return str(raw)


def _text_field(path: Path, line_no: int, obj: dict, key: str, required: bool = False) -> str:
    if key not in obj:
        if required:
            raise DataFormatError(f"{path}:{line_no}: missing field {key!r}")
        return ""
    value = obj[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{line_no}: field {key!r} must be a string")
    return value


def _add_unique(records: dict[str, str], key: str, value: str, path: Path, line_no: int, label: str) -> None:
    if key in records:
        raise DataFormatError(f"{path}:{line_no}: duplicate {label} {key!r}")
    records[key] = value


def read_id_texts(path: Path) -> dict[str, str]:
    """{_id: text} from a JSONL file of objects (BEIR queries.jsonl); ids are unique, ``text`` is required."""
    records: dict[str, str] = {}
    for line_no, obj in _iter_jsonl(path):
        text = _text_field(path, line_no, obj, "text", required=True)
        _add_unique(records, _record_id(path, line_no, obj), text, path, line_no, "_id")
    return records


def read_queries(path: Path) -> dict[str, str]:
    """Queries from BEIR JSONL (``_id``, ``text``) or TSV (``query id<TAB>text``)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        queries = read_id_texts(path)
    else:
        queries = {}
        for line_no, line in iter_lines(path):
            qid, sep, text = line.partition("\t")
            if not sep or not qid:
                raise DataFormatError(f"{path}:{line_no}: expected 'query id<TAB>text'")
            _add_unique(queries, qid, text, path, line_no, "query id")
    if not queries:
        raise DataFormatError(f"{path}: no queries")
    return queries


@dataclass
class BeirDataset:
    """A BEIR folder. Nothing is read until asked; the corpus is only ever streamed.

    ``drop_self_hits`` (see ``runs.SelfHits``): True or False from the registry or the user; None until
    ``load_split`` decides it from the data (the set of queries that are documents of the corpus).
    """

    root: Path
    name: str
    drop_self_hits: SelfHits | None = None
    default_split: str = "test"

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, download: bool = True,
             drop_self_hits: bool | None = None) -> BeirDataset:
        """A dataset by registry name or folder; ``drop_self_hits`` overrides the registry or the data check."""
        root = resolve_dataset(name_or_path, download=download)
        info = dataset_info(Path(name_or_path).name if Path(name_or_path).is_dir() else str(name_or_path))
        rule = info.drop_self_hits if drop_self_hits is None else drop_self_hits
        return cls(root=root, name=info.name, drop_self_hits=rule, default_split=info.default_split)

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
                           _text_field(self.corpus_path, line_no, obj, "text", required=True))
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
        keep_unknown_docs: bool = False,
    ) -> dict[str, dict[str, int]]:
        """qrels as {query id: {doc id: relevance}}; unknown ids are counted in a warning and skipped, or,
        for documents with ``keep_unknown_docs``, kept (a relevant document no system can retrieve)."""
        path = self.qrels_path(split or self.default_split)
        if not path.is_file():
            available = sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))
            raise DataFormatError(f"{path}: file not found (splits here: {', '.join(available) or 'none'})")
        qrels: dict[str, dict[str, int]] = {}
        unknown_docs = unknown_queries = 0
        for line_no, line in iter_lines(path):
            fields = line.split("\t")
            if line_no == 1 and fields[0] == "query-id":
                continue
            if len(fields) != 3:
                raise DataFormatError(f"{path}:{line_no}: expected 3 tab-separated fields, got {len(fields)}")
            qid, doc_id, score = fields
            try:
                relevance = int(float(score))
            except ValueError:
                raise DataFormatError(f"{path}:{line_no}: relevance {score!r} is not a number") from None
            if known_queries is not None and qid not in known_queries:
                unknown_queries += 1
                continue
            if known_docs is not None and doc_id not in known_docs:
                unknown_docs += 1
                if not keep_unknown_docs:
                    continue
            qrels.setdefault(qid, {})[doc_id] = relevance
        if unknown_docs:
            logger.warning("%s: %s %d judgements naming documents not in the corpus%s", path,
                           "kept" if keep_unknown_docs else "skipped", unknown_docs,
                           " (their queries count; the documents cannot be retrieved)" if keep_unknown_docs else "")
        if unknown_queries:
            logger.warning("%s: skipped %d judgements naming queries not in queries.jsonl", path, unknown_queries)
        if not qrels:
            raise DataFormatError(f"{path}: no usable judgements")
        return qrels

    def load_split(
        self, split: str | None = None, keep_unknown_docs: bool = True
    ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """Queries judged in ``split`` and their qrels, validated against the corpus and query ids.

        Judgements naming documents missing from the corpus are kept by default, so such a query scores
        0 instead of leaving the mean (BEIR's and trec_eval's figures); pass False where every judged
        document must have a text (training positives). Also settles ``drop_self_hits`` if still open.
        """
        split = split or self.default_split
        all_queries = self.load_queries()
        doc_ids = self.doc_ids()
        qrels = self.load_qrels(split, known_docs=doc_ids, known_queries=set(all_queries),
                                keep_unknown_docs=keep_unknown_docs)
        queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
        self.decide_self_hits(all_queries, doc_ids)
        return queries, qrels

    def decide_self_hits(self, queries: dict[str, str], doc_ids: set[str]) -> SelfHits:
        """Settle ``drop_self_hits`` from the data when neither the registry nor the user did; say so in one line."""
        if self.drop_self_hits is None:
            shared = not doc_ids.isdisjoint(queries)
            decision = decide_self_hits(self.name, queries, self.iter_corpus() if shared else ())
            self.drop_self_hits = decision.self_queries
            logger.warning("%s", decision.describe())
        return self.drop_self_hits


def load_queries(
    source: str | os.PathLike, split: str | None = None, drop_self_hits: bool | None = None
) -> tuple[dict[str, str], SelfHits]:
    """Queries from a file (.jsonl or .tsv), or a dataset's judged queries in ``split``.

    Returns the queries and which self-hits to drop: ``drop_self_hits`` when given, else the dataset's
    rule (registry or data check), and none for a queries file.
    """
    if Path(source).is_file():
        return read_queries(Path(source)), bool(drop_self_hits)
    dataset = BeirDataset.open(source, drop_self_hits=drop_self_hits)
    queries = dataset.load_split(split)[0]
    return queries, dataset.drop_self_hits if dataset.drop_self_hits is not None else False
