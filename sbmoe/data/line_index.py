"""Byte-offset indexes of text files, so that rows of multi-GB training files are read on demand.

``LineIndex`` holds the start offset of every non-blank line (plus the file size) as an int64 array
memory-mapped from sbmoe's cache: built once per file version by a chunked numpy scan, then shared by
every process that reads the file. ``KeyedLines`` adds a sorted integer-id table for ``id<TAB>text``
files (MS MARCO ``collection.tsv``, ``queries.train.tsv``), looked up with a binary search instead of
a dict of every text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .beir import DataFormatError
from .roots import cache_root

_CHUNK = 1 << 24  # bytes scanned at a time
_RUN_GAP = 256  # rows further apart than this are read with separate reads


def _cache_path(path: Path, kind: str) -> Path:
    """One cache file per (file, size, mtime, inode): a rewritten file gets a fresh index."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    return cache_root() / "line_index" / f"{hashlib.sha1(key.encode()).hexdigest()}.{kind}.i64"


def _scan_line_starts(path: Path, handle) -> None:
    """Write the offset of each non-blank line (blank: empty or a lone ``\\r``) and then the file size."""
    pos, line_start, last_byte = 0, 0, -1
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            data = np.frombuffer(chunk, dtype=np.uint8)
            newlines = np.flatnonzero(data == 10)
            if len(newlines):
                ends = newlines + pos
                starts = np.concatenate(([line_start], ends[:-1] + 1))
                before = np.where(newlines > 0, data[np.maximum(newlines - 1, 0)], last_byte)
                lengths = ends - starts
                blank = (lengths == 0) | ((lengths == 1) & (before == 13))
                starts[~blank].astype(np.int64).tofile(handle)
                line_start = int(ends[-1]) + 1
            last_byte, pos = int(data[-1]), pos + len(data)
    if pos > line_start and not (pos - line_start == 1 and last_byte == 13):
        np.array([line_start], dtype=np.int64).tofile(handle)
    np.array([pos], dtype=np.int64).tofile(handle)


def _cached_array(path: Path, kind: str, build) -> np.ndarray:
    cached = _cache_path(path, kind)
    if not cached.exists():
        with atomic_file(cached, "wb") as handle:
            build(handle)
    if cached.stat().st_size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.memmap(cached, dtype=np.int64, mode="r")


class LineIndex:
    """Random access to the non-blank lines of a text file by row number (0-based)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.starts = _cached_array(self.path, "lines", lambda handle: _scan_line_starts(self.path, handle))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def read(self, rows: Sequence[int] | np.ndarray) -> list[bytes]:
        """The raw bytes of each row (line ending stripped), in the order asked; near rows share one read."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[bytes] = [b""] * len(rows)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        breaks = np.flatnonzero(np.diff(ranked) > _RUN_GAP) + 1
        with open(self.path, "rb") as handle:
            for run in np.split(np.arange(len(ranked)), breaks):
                first, last = int(ranked[run[0]]), int(ranked[run[-1]])
                base = int(self.starts[first])
                handle.seek(base)
                block = handle.read(int(self.starts[last + 1]) - base)
                for slot in run:
                    row = int(ranked[slot])
                    start, end = int(self.starts[row]) - base, int(self.starts[row + 1]) - base
                    out[order[slot]] = block[start:end].rstrip(b"\r\n")
        return out

    def line_number(self, row: int) -> int:
        """1-based line number of a row in the file (counts blank lines too); used for error messages."""
        target, count = int(self.starts[row]), 1
        with open(self.path, "rb") as handle:
            while target > 0:
                chunk = handle.read(min(_CHUNK, target))
                count += chunk.count(b"\n")
                target -= len(chunk)
        return count

    def decode(self, raw: bytes, row: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{self.path}:{self.line_number(row)}: not valid UTF-8 "
                                  f"(byte {exc.start})") from None


class KeyedLines:
    """``id<TAB>text`` lines looked up by integer id through a sorted id table (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        self.lines = LineIndex(path)
        self.path = self.lines.path
        self.keys = _cached_array(self.path, "keys", self._write_keys)
        self.rows: np.ndarray | None = None
        self.ranked = self.keys
        if len(self.keys) > 1 and not np.all(self.keys[1:] > self.keys[:-1]):
            self.rows = _cached_array(self.path, "order",
                                      lambda handle: np.argsort(self.keys, kind="stable").tofile(handle))
            self.ranked = _cached_array(self.path, "ranked", lambda handle: self.keys[self.rows].tofile(handle))
            same = np.flatnonzero(self.ranked[1:] == self.ranked[:-1])
            if len(same):
                row = int(self.rows[same[0] + 1])
                raise DataFormatError(f"{self.path}:{self.lines.line_number(row)}: duplicate id "
                                      f"{int(self.keys[row])}")

    def _write_keys(self, handle) -> None:
        keys = np.empty(len(self.lines), dtype=np.int64)
        row = 0
        with open(self.path, "rb") as source:
            for line in source:
                if line.rstrip(b"\r\n") == b"":
                    continue
                head = line.split(b"\t", 1)[0]
                try:
                    keys[row] = int(head)
                except ValueError:
                    raise DataFormatError(f"{self.path}:{self.lines.line_number(row)}: id {head[:40]!r} is not "
                                          "an integer (expected id<TAB>text)") from None
                row += 1
        keys.tofile(handle)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the file has no such id."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ranked):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ranked, ids), 0, len(self.ranked) - 1)
        found = self.ranked[pos] == ids
        rows = pos if self.rows is None else self.rows[pos]
        return np.where(found, rows, -1)

    def texts(self, rows: np.ndarray) -> list[str]:
        """The text field of each row."""
        out = []
        for row, raw in zip(rows, self.lines.read(rows), strict=True):
            fields = raw.split(b"\t", 1)
            if len(fields) != 2:
                raise DataFormatError(f"{self.path}:{self.lines.line_number(int(row))}: expected id<TAB>text")
            out.append(self.lines.decode(fields[1], int(row)))
        return out
