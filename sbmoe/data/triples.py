"""Training triples (and pairs) files, read row by row through a byte-offset index instead of into one list.

Formats: TSV ``query<TAB>positive<TAB>negative``, JSONL with ``query``/``positive``/``negative`` keys, pairs
(TSV ``query<TAB>positive`` or JSONL without ``negative``: trained on in-batch negatives only; the first row
decides which a file holds), or
MS MARCO id triples ``qid<TAB>pos_pid<TAB>neg_pid`` whose texts come from ``collection.tsv``
(``pid<TAB>passage``) and a queries file (``qid<TAB>query``). A malformed row fails with file:line
when it is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .beir import DataFormatError
from .line_index import KeyedLines, LineIndex

Triple = tuple[str, ...]  # (query, positive, negative), or (query, positive) in a pairs file
COLUMNS = ("anchor", "positive", "negative")  # the trainer's column names, in row order


class TriplesSource(Protocol):
    """Random access to the rows of a triples file."""

    path: Path
    width: int  # texts per row: 3 (triples) or 2 (pairs)

    def __len__(self) -> int: ...

    def rows(self, rows: Sequence[int] | np.ndarray) -> list[Triple]: ...


class TextTriples:
    """TSV or JSONL triples that carry their texts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lines = LineIndex(self.path)
        self.jsonl = self.path.suffix == ".jsonl"
        self.width = 3
        if len(self.lines):
            self.width = 2 if len(self._fields(self.lines.decode(self.lines.read([0])[0], 0), 0)) == 2 else 3

    def __len__(self) -> int:
        return len(self.lines)

    def _fields(self, line: str, row: int) -> Triple:
        """The row's texts, before checking that their number matches the file's."""
        if not self.jsonl:
            return tuple(line.split("\t"))
        where = f"{self.path}:{self.lines.line_number(row)}"
        try:
            obj = json.loads(line)
            texts = (obj["query"], obj["positive"]) + ((obj["negative"],) if "negative" in obj else ())
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataFormatError(f"{where}: expected JSON with query, positive[, negative] "
                                  f"({type(exc).__name__})") from None
        if not all(isinstance(text, str) for text in texts):
            raise DataFormatError(f"{where}: query, positive and negative must be strings")
        return texts

    def _parse(self, raw: bytes, row: int) -> Triple:
        texts = self._fields(self.lines.decode(raw, row), row)
        if len(texts) != self.width:
            where = f"{self.path}:{self.lines.line_number(row)}"
            if self.jsonl:
                raise DataFormatError(f"{where}: expected JSON with " + ("query, positive, negative" if self.width == 3
                                      else "query and positive, no negative") + " (like the first row)")
            raise DataFormatError(f"{where}: expected " + ("query<TAB>positive<TAB>negative (or query<TAB>positive "
                                  "in every row)" if self.width == 3 else "query<TAB>positive (like the first row)"))
        return texts

    def rows(self, rows: Sequence[int] | np.ndarray) -> list[Triple]:
        return [self._parse(raw, int(row)) for row, raw in zip(rows, self.lines.read(rows), strict=True)]


class IdTriples:
    """MS MARCO id triples; query and passage texts are looked up by id, never all loaded."""

    width = 3

    def __init__(self, path: Path, collection: Path, queries: Path) -> None:
        self.path = Path(path)
        self.lines = LineIndex(self.path)
        self.collection = KeyedLines(Path(collection))
        self.queries = KeyedLines(Path(queries))

    def __len__(self) -> int:
        return len(self.lines)

    def ids(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(rows), 3) integer ids: qid, positive pid, negative pid."""
        out = np.empty((len(rows), 3), dtype=np.int64)
        for i, (row, raw) in enumerate(zip(rows, self.lines.read(rows), strict=True)):
            fields = raw.split(b"\t")
            try:
                if len(fields) != 3:
                    raise ValueError
                out[i] = [int(field) for field in fields]
            except ValueError:
                raise DataFormatError(f"{self.path}:{self.lines.line_number(int(row))}: expected "
                                      "qid<TAB>pos_pid<TAB>neg_pid (integers)") from None
        return out

    def _lookup(self, table: KeyedLines, ids: np.ndarray, rows: Sequence[int] | np.ndarray, what: str) -> list[str]:
        found = table.find(ids)
        missing = np.flatnonzero(found < 0)
        if len(missing):
            row = int(rows[int(missing[0]) % len(rows)])
            raise DataFormatError(f"{self.path}:{self.lines.line_number(row)}: {what} id {int(ids[missing[0]])} "
                                  f"is not in {table.path}")
        return table.texts(found)

    def rows(self, rows: Sequence[int] | np.ndarray) -> list[Triple]:
        ids = self.ids(rows)
        queries = self._lookup(self.queries, ids[:, 0], rows, "query")
        passages = self._lookup(self.collection, ids[:, 1:].T.reshape(-1), rows, "passage")
        n = len(rows)
        return list(zip(queries, passages[:n], passages[n:], strict=True))


def open_triples(path: Path, collection: Path | None = None, queries: Path | None = None) -> TriplesSource:
    """Id triples when a collection is given (then the queries file is required), text triples otherwise."""
    if collection is None and queries is None:
        return TextTriples(path)
    if collection is None or queries is None:
        raise ValueError("MS MARCO id triples need both --collection and --queries-file")
    return IdTriples(path, collection, queries)


def read_triples(path: Path) -> list[Triple]:
    """Every (query, positive, negative) row of a small TSV or JSONL file, with file:line errors."""
    source = TextTriples(Path(path))
    if not len(source):
        raise DataFormatError(f"{path}: no training triples")
    return source.rows(np.arange(len(source)))
