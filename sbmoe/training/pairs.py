"""Training pairs: (query, positive, hard negative) triples and a held-out dev retrieval task.

From a BEIR split (positives from qrels, one hard negative mined with the base encoder; in memory) or
from a triples file (streamed: rows are read on demand in a seeded windowed shuffle, never all at once).
A seeded slice of the queries (BEIR) or rows (triples) is held out as the dev set.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from ..data import BeirDataset, DataFormatError, TriplesSource, WindowShuffle, open_triples
from ..data.triples import COLUMNS
from ..index.retriever import Retriever
from ..models.embedding_cache import CorpusEmbeddingCache
from .config import TrainConfig

READ_ROWS = 4096  # rows of a shuffled window read from disk at once


@dataclass
class TripleStream:
    """The training rows of a triples file (dev rows left out) in a seeded windowed shuffle.

    Stream position ``p`` is the ``p``-th row handed to the trainer (epochs follow each other with fresh
    permutations), so a resumed run starts at ``global_step * global_batch`` and sees exactly the rows
    an uninterrupted run would have seen.
    """

    source: TriplesSource
    dev_rows: np.ndarray  # sorted file rows held out
    buffer: int
    seed: int

    def __len__(self) -> int:
        return len(self.source) - len(self.dev_rows)

    def file_rows(self, train_rows: np.ndarray) -> np.ndarray:
        """File row of each training row: the k-th row not held out."""
        shifted = self.dev_rows - np.arange(len(self.dev_rows))
        return train_rows + np.searchsorted(shifted, train_rows, side="right")

    @property
    def columns(self) -> tuple[str, ...]:
        return COLUMNS[:self.source.width]

    def iter_from(self, position: int = 0) -> Iterator[dict[str, str]]:
        """{"anchor", "positive"[, "negative"]} rows from stream position ``position`` on, forever."""
        columns = self.columns
        for window in WindowShuffle(len(self), self.buffer, self.seed).windows(position):
            for start in range(0, len(window), READ_ROWS):  # texts of READ_ROWS rows in memory at a time
                for row in self.source.rows(self.file_rows(window[start:start + READ_ROWS])):
                    yield dict(zip(columns, row, strict=True))

    def dataset(self, position: int = 0):
        """The stream as a ``datasets.IterableDataset`` (one shard: under DDP every rank reads the same
        stream and accelerate hands each rank its slice of every global batch)."""
        from datasets import Features, IterableDataset, Value

        features = Features({name: Value("string") for name in self.columns})
        return IterableDataset.from_generator(_stream_rows, features=features,
                                              gen_kwargs={"stream": self, "position": position})


def _stream_rows(stream: TripleStream, position: int) -> Iterator[dict[str, str]]:
    yield from stream.iter_from(position)


@dataclass
class TrainingData:
    """Triples for training (in memory, or a stream over a triples file) and a held-out retrieval task."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]  # empty: in-batch negatives only
    dev_queries: dict[str, str]
    dev_corpus: dict[str, str]
    dev_qrels: dict[str, set[str]]
    info: dict[str, Any] = field(default_factory=dict)
    stream: TripleStream | None = None

    def __len__(self) -> int:
        return len(self.stream) if self.stream is not None else len(self.anchors)

    def materialize(self) -> None:
        """Read a stream's training rows into the lists (head-only training embeds every text up front)."""
        if self.stream is None or self.anchors:
            return
        rows = self.stream.source.rows(self.stream.file_rows(np.arange(len(self.stream))))
        for query, positive, *negative in rows:
            self.anchors.append(query)
            self.positives.append(positive)
            self.negatives.extend(negative)

    def columns(self) -> dict[str, list[str]]:
        """The in-memory training columns, as the trainer's dataset takes them."""
        out = {"anchor": self.anchors, "positive": self.positives}
        if self.negatives:
            out["negative"] = self.negatives
        return out


def _split_dev(ids: list[str], fraction: float, seed: int) -> set[str]:
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: max(1, round(len(shuffled) * fraction))]) if fraction > 0 else set()


def triples_data(config: TrainConfig) -> TrainingData:
    """A stream over a triples file with a seeded hold-out of ``round(dev_fraction * rows)`` rows (at most
    ``dev_max_rows``); dev queries retrieve among all dev positives and negatives. The hold-out is by row:
    a query that also occurs in training rows (MS MARCO has several triples per query) is seen in training."""
    source = open_triples(Path(config.data), config.collection, config.queries_file)
    n = len(source)
    if not n:
        raise DataFormatError(f"{config.data}: no training triples")
    held = min(max(1, round(n * config.dev_fraction)), config.dev_max_rows, n) if config.dev_fraction > 0 else 0
    dev_rows = np.sort(np.random.default_rng(config.seed).choice(n, size=held, replace=False)).astype(np.int64)
    data = TrainingData([], [], [], {}, {}, {}, {"source": str(config.data), "triples": n, "dev_rows": held},
                        stream=TripleStream(source, dev_rows, config.shuffle_buffer, config.seed))
    texts: dict[str, str] = {}
    for row, (query, positive, *negative) in zip(dev_rows, source.rows(dev_rows), strict=True):
        pos_id = texts.setdefault(positive, f"p{len(texts)}")
        for text in negative:
            texts.setdefault(text, f"p{len(texts)}")
        qid = f"q{row}"
        data.dev_queries[qid] = query
        data.dev_qrels.setdefault(qid, set()).add(pos_id)
    data.dev_corpus = {doc_id: text for text, doc_id in texts.items()}
    return data


def beir_data(dataset: BeirDataset, split: str, miner: SentenceTransformer, config: TrainConfig) -> TrainingData:
    """Training data from a BEIR split: (query, positive) pairs from the qrels, with one hard negative per
    pair mined with ``miner`` (``negatives="mined"``) or none (``"none"``: in-batch negatives only).

    The negative is the highest-ranked document that is not judged relevant; dev evaluation searches the
    dev queries' positives and their mined negatives plus ``dev_distractors`` random documents. The dev
    queries are a seeded ``dev_fraction`` of the split's, or those of ``dev_split`` when it is given.
    """
    queries, qrels = dataset.load_split(split, keep_unknown_docs=False)
    if config.dev_split is None:
        dev_ids = _split_dev(list(queries), config.dev_fraction, config.seed)
    else:  # a fixed dev split: the same dev queries for every seed; a query judged in both is dev only
        dev_queries, dev_qrels = dataset.load_split(config.dev_split, keep_unknown_docs=False)
        queries, dev_ids = {**queries, **dev_queries}, set(dev_queries)
        qrels = {**qrels, **dev_qrels}
    mine = config.negatives == "mined"
    run: dict[str, list[str]] = {}
    if mine:
        retriever = Retriever.from_dataset(miner, dataset, config.batch_size, CorpusEmbeddingCache(),
                                           config.show_progress)
        run = retriever.search(queries, k=20, drop_self_hits=dataset.drop_self_hits)
    corpus = {doc.doc_id: doc.as_text() for doc in dataset.iter_corpus()}
    data = TrainingData([], [], [], {}, {}, {}, {"source": dataset.name, "split": split,
                                                  "train_queries": len(queries) - len(dev_ids),
                                                  "dev_queries": len(dev_ids)})
    dev_docs: set[str] = set()
    for qid, text in queries.items():
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        negative = next((d for d in run.get(qid, ()) if d not in relevant), None)
        if qid in dev_ids:
            data.dev_queries[qid] = text
            data.dev_qrels[qid] = relevant
            dev_docs |= relevant | ({negative} if negative else set())
            continue
        for positive in sorted(relevant):
            if mine and negative is None:
                continue
            data.anchors.append(text)
            data.positives.append(corpus[positive])
            if mine:
                data.negatives.append(corpus[negative])
    others = sorted(set(corpus) - dev_docs)
    dev_docs |= set(random.Random(config.seed).sample(others, min(config.dev_distractors, len(others))))
    data.dev_corpus = {d: corpus[d] for d in sorted(dev_docs)}
    data.info["train_pairs"] = len(data.anchors)
    data.info["negatives"] = config.negatives
    return data
