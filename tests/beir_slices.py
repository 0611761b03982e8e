"""Slices of a BEIR folder for tests: its first documents and the test queries judged against them."""

from __future__ import annotations

import json
from pathlib import Path


def write_slice(source: Path, out: Path, documents: int) -> Path:
    """The first ``documents`` of ``source``'s corpus, with its test qrels and queries restricted to them."""
    (out / "qrels").mkdir(parents=True)
    docs = (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:documents]
    (out / "corpus.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
    doc_ids = {json.loads(line)["_id"] for line in docs}
    lines = (source / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines[1:] if line.split("\t")[1] in doc_ids]
    (out / "qrels" / "test.tsv").write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
    qids = {line.split("\t")[0] for line in kept}
    queries = [q for q in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(q)["_id"] in qids]
    (out / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    return out
