"""Training pairs: (query, positive, hard negative) triples and a held-out dev retrieval task.

From a BEIR split (positives from qrels, one hard negative mined with the base encoder) or from a
triples file. A seeded slice of the queries is held out as the dev set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from ..data import BeirDataset, read_triples
from ..index.retriever import Retriever
from ..models.embedding_cache import CorpusEmbeddingCache
from .config import TrainConfig


@dataclass
class TrainingData:
    """Triples for training and a held-out retrieval task for dev evaluation."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]
    dev_queries: dict[str, str]
    dev_corpus: dict[str, str]
    dev_qrels: dict[str, set[str]]
    info: dict[str, Any] = field(default_factory=dict)


def _split_dev(ids: list[str], fraction: float, seed: int) -> set[str]:
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: max(1, round(len(shuffled) * fraction))]) if fraction > 0 else set()


def triples_data(path: Path, dev_fraction: float, seed: int) -> TrainingData:
    """Training data from a triples file; dev queries retrieve among all dev positives and negatives."""
    triples = read_triples(path)
    dev_rows = _split_dev([str(i) for i in range(len(triples))], dev_fraction, seed)
    data = TrainingData([], [], [], {}, {}, {}, {"source": str(path), "triples": len(triples)})
    texts: dict[str, str] = {}
    for i, (query, positive, negative) in enumerate(triples):
        if str(i) in dev_rows:
            pos_id = texts.setdefault(positive, f"p{len(texts)}")
            texts.setdefault(negative, f"p{len(texts)}")
            qid = f"q{i}"
            data.dev_queries[qid] = query
            data.dev_qrels.setdefault(qid, set()).add(pos_id)
        else:
            data.anchors.append(query)
            data.positives.append(positive)
            data.negatives.append(negative)
    data.dev_corpus = {doc_id: text for text, doc_id in texts.items()}
    return data


def beir_data(dataset: BeirDataset, split: str, miner: SentenceTransformer, config: TrainConfig) -> TrainingData:
    """Training data from a BEIR split; one hard negative per (query, positive), mined with ``miner``.

    The negative is the highest-ranked document that is not judged relevant; dev evaluation searches the
    dev queries' positives and their mined negatives plus ``dev_distractors`` random documents.
    """
    queries, qrels = dataset.load_split(split)
    dev_ids = _split_dev(list(queries), config.dev_fraction, config.seed)
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
        negative = next((d for d in run[qid] if d not in relevant), None)
        if qid in dev_ids:
            data.dev_queries[qid] = text
            data.dev_qrels[qid] = relevant
            dev_docs |= relevant | ({negative} if negative else set())
            continue
        for positive in sorted(relevant):
            if negative is None:
                continue
            data.anchors.append(text)
            data.positives.append(corpus[positive])
            data.negatives.append(corpus[negative])
    others = sorted(set(corpus) - dev_docs)
    dev_docs |= set(random.Random(config.seed).sample(others, min(config.dev_distractors, len(others))))
    data.dev_corpus = {d: corpus[d] for d in sorted(dev_docs)}
    data.info["train_pairs"] = len(data.anchors)
    return data
