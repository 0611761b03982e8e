"""Training triples files: TSV ``query<TAB>positive<TAB>negative`` or JSONL with those keys."""

from __future__ import annotations

import json
from pathlib import Path

from .beir import DataFormatError


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """(query, positive, negative) rows from a TSV or JSONL file, with file:line errors."""
    triples: list[tuple[str, str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                    triples.append((obj["query"], obj["positive"], obj["negative"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataFormatError(f"{path}:{line_no}: expected JSON with query, positive, negative "
                                          f"({type(exc).__name__})") from None
            else:
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3:
                    raise DataFormatError(f"{path}:{line_no}: expected query<TAB>positive<TAB>negative")
                triples.append((fields[0], fields[1], fields[2]))
    if not triples:
        raise DataFormatError(f"{path}: no training triples")
    return triples
