"""Corpus embeddings cached on disk, so index and eval encode a corpus once per model."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..data import cache_root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything that determines a corpus's embeddings."""

    model_fingerprint: str
    corpus_fingerprint: str
    max_length: int | None
    pooling: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


class CorpusEmbeddingCache:
    """One folder per key: ``embeddings.npy`` (float32, memory-mapped on read) and ``doc_ids.txt``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "embeddings"

    def path(self, key: EmbeddingKey) -> Path:
        return self.root / key.digest()

    def get(self, key: EmbeddingKey) -> tuple[list[str], np.ndarray] | None:
        folder = self.path(key)
        try:
            doc_ids = (folder / "doc_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
            embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError):
            return None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(doc_ids):
            logger.warning("ignoring inconsistent embedding cache entry %s", folder)
            return None
        return doc_ids, embeddings

    def put(self, key: EmbeddingKey, doc_ids: list[str], embeddings: np.ndarray) -> Path:
        if embeddings.shape[0] != len(doc_ids):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(doc_ids)} doc ids")
        return self.put_stream(key, [(doc_ids, embeddings)], len(doc_ids), embeddings.shape[1])

    def put_stream(self, key: EmbeddingKey, parts: Iterable[tuple[list[str], np.ndarray]], rows: int,
                   dim: int) -> Path:
        """Write an entry from (doc ids, embeddings) parts, one part in memory at a time."""
        folder = self.path(key)
        with atomic_dir(folder, overwrite=True) as tmp:
            out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
            offset = 0
            with open(tmp / "doc_ids.txt", "w", encoding="utf-8") as ids_file:
                for doc_ids, embeddings in parts:
                    out[offset:offset + len(doc_ids)] = embeddings
                    offset += len(doc_ids)
                    ids_file.write("".join(f"{d}\n" for d in doc_ids))
            if offset != rows:
                raise ValueError(f"{offset} embeddings written for {rows} expected rows")
            out.flush()
            del out
            (tmp / "key.json").write_text(json.dumps(asdict(key), indent=2), encoding="utf-8")
        return folder
