"""TREC run files: ``qid Q0 docid rank score tag``, six whitespace-separated columns."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_file

Run = dict[str, dict[str, float]]
DEFAULT_DEPTH = 100  # hits per query written by `sbmoe search` and `sbmoe bm25 search`


def ranked(hits: dict[str, float]) -> list[tuple[str, float]]:
    """Hits by descending score, ties broken by doc id so that runs are reproducible."""
    return sorted(hits.items(), key=lambda item: (-item[1], item[0]))


def top_hits(hits: Iterable[tuple[str, float]], qid: str, k: int, drop_self_hits: bool = False) -> dict[str, float]:
    """The first ``k`` of ``hits`` (already in rank order), skipping a hit whose id is ``qid`` when asked.

    Searchers fetch k + 1 hits when dropping self-hits (BEIR's ignore_identical_ids), so k remain.
    """
    kept: dict[str, float] = {}
    for doc_id, score in hits:
        if len(kept) == k:
            break
        if not (drop_self_hits and doc_id == qid):
            kept[doc_id] = score
    return kept


def write_trec_run(run: Run, path: Path, tag: str = "sbmoe") -> Path:
    tag = tag.replace(" ", "_") or "sbmoe"
    with atomic_file(Path(path)) as handle:
        for qid, hits in run.items():
            for rank, (doc_id, score) in enumerate(ranked(hits), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
    return Path(path)


def read_trec_run(path: Path) -> Run:
    run: Run = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 6:
                raise ValueError(f"{path}:{line_no}: expected 6 columns in a TREC run, got {len(fields)}")
            qid, _, doc_id, _, score, _ = fields
            try:
                run.setdefault(qid, {})[doc_id] = float(score)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: score {score!r} is not a number") from None
    return run
