"""TREC run files: ``qid Q0 docid rank score tag``, six whitespace-separated columns."""

from __future__ import annotations

from collections.abc import Iterable, Set
from pathlib import Path

from .atomic import atomic_file

Run = dict[str, dict[str, float]]
DEFAULT_DEPTH = 100  # hits per query written by `sbmoe search` and `sbmoe bm25 search`
# Which queries lose a hit whose id equals their own: all (True), none (False), or the query ids in a set.
SelfHits = bool | Set[str]


def ranked(hits: dict[str, float]) -> list[tuple[str, float]]:
    """Hits by descending score, ties broken by doc id so that runs are reproducible."""
    return sorted(hits.items(), key=lambda item: (-item[1], item[0]))


def drops_self_hit(drop_self_hits: SelfHits, qid: str) -> bool:
    """Whether query ``qid`` loses a hit whose id equals its own under ``drop_self_hits``."""
    if not drop_self_hits:  # False, an empty set, or None (a rule not decided yet)
        return False
    return drop_self_hits is True or qid in drop_self_hits


def top_hits(hits: Iterable[tuple[str, float]], qid: str, k: int, drop_self_hits: SelfHits = False) -> dict[str, float]:
    """The first ``k`` of ``hits`` (already in rank order), skipping a hit whose id is ``qid`` when asked.

    Searchers fetch k + 1 hits when dropping self-hits (BEIR's ignore_identical_ids), so k remain.
    """
    drop = drops_self_hit(drop_self_hits, qid)
    kept: dict[str, float] = {}
    for doc_id, score in hits:
        if len(kept) == k:
            break
        if not (drop and doc_id == qid):
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
