"""Corpus embeddings cached on disk, so index and eval encode a corpus once per model."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, reason_of
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
        """The entry's doc ids and memory-mapped embeddings; None when absent. The cache is sbmoe's own, so a
        damaged entry is removed with a warning and the caller encodes the corpus again."""
        folder = self.path(key)
        if not folder.is_dir():
            return None
        try:
            doc_ids = (folder / "doc_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
            embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
        except (ValueError, OSError) as exc:
            return self.discard(folder, reason_of(exc))
        if embeddings.ndim != 2 or embeddings.shape[0] != len(doc_ids) or embeddings.dtype != np.float32:
            return self.discard(folder, f"{embeddings.shape} {embeddings.dtype} embeddings for {len(doc_ids)} doc ids")
        return doc_ids, embeddings

    @staticmethod
    def discard(folder: Path, reason: str) -> None:
        logger.warning("embedding cache entry %s is damaged (%s): removed, the corpus is encoded again", folder,
                       reason)
        shutil.rmtree(folder, ignore_errors=True)

    def put(self, key: EmbeddingKey, doc_ids: list[str], embeddings: np.ndarray) -> Path:
        if embeddings.shape[0] != len(doc_ids):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(doc_ids)} doc ids")
        return self.put_stream(key, [(doc_ids, embeddings)], len(doc_ids), embeddings.shape[1])

    def put_stream(self, key: EmbeddingKey, parts: Iterable[tuple[list[str], np.ndarray]], rows: int,
                   dim: int) -> Path:
        """Write an entry from (doc ids, embeddings) parts, one part in memory at a time.

        The .npy file is written as a stream, not through a memory map: on a full disk a mapped page fails
        with SIGBUS, a write with ENOSPC, which ``atomic_dir`` reports in one line after removing the entry.
        """
        folder = self.path(key)
        with atomic_dir(folder, overwrite=True, needed=rows * dim * 4) as tmp:
            offset = 0
            with open(tmp / "embeddings.npy", "wb") as out, open(tmp / "doc_ids.txt", "w", encoding="utf-8") as ids:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (rows, dim)}
                np.lib.format.write_array_header_1_0(out, header)
                for doc_ids, embeddings in parts:
                    out.write(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
                    offset += len(doc_ids)
                    ids.write("".join(f"{d}\n" for d in doc_ids))
            if offset != rows:
                raise ValueError(f"{offset} embeddings written for {rows} expected rows")
            (tmp / "key.json").write_text(json.dumps(asdict(key), indent=2), encoding="utf-8")
        return folder
