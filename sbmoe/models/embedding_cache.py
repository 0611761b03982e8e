"""Corpus and query embeddings cached on disk, so index and eval encode each text set once per model; and the
facts of encoders loaded before (``EncoderMemo``), so a warm eval finds its entries without loading one."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_dir, reason_of, write_json
from ..data import cache_root

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .encoder import EncoderConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything that determines a corpus's embeddings."""

    model_fingerprint: str
    corpus_fingerprint: str
    max_length: int | None
    pooling: str
    prompt: str = ""  # the prompt prepended to every text (the model's query or document prompt)
    similarity: str = ""  # the similarity the embeddings are scored with (the vectors are stored raw)

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


QUERIES_PREFIX = "queries:"


def queries_fingerprint(queries: Mapping[str, str]) -> str:
    """Content hash of a query set, ids and texts in order; the ``corpus_fingerprint`` of a queries entry.

    The ``queries:`` prefix keeps a query entry from ever sharing a key with a corpus: queries take the
    query route of a model with separate heads, documents the document route.
    """
    digest = hashlib.sha256(json.dumps(list(queries.items()), ensure_ascii=False).encode("utf-8"))
    return f"{QUERIES_PREFIX}{digest.hexdigest()}"


@dataclass(frozen=True)
class EncoderFacts:
    """What a loaded encoder's embeddings depend on and look like: enough to key cache entries and to describe
    an index over them (meta.json) without loading the weights again."""

    model_fingerprint: str
    pooling: str
    max_length: int | None
    dim: int
    normalize: bool
    backend: str
    similarity: str = "cosine"
    prompts: dict[str, str] = field(default_factory=dict)  # {"query", "document"} as applied
    document_fingerprint: str = ""  # the document side's (a routed model's base); "" = model_fingerprint
    graph: str = ""  # the ONNX graph file that runs the Transformer; "" under torch

    @classmethod
    def of(cls, model: SentenceTransformer) -> EncoderFacts:
        from .declared import declared_prompts, declared_similarity
        from .fingerprint import document_fingerprint, model_fingerprint
        from .onnx_backend import backend_of, graph_of
        from .pipeline import normalizes, pooling_mode

        graph = graph_of(model)
        return cls(model_fingerprint(model), pooling_mode(model), model.max_seq_length,
                   model.get_embedding_dimension(), normalizes(model), backend_of(model), declared_similarity(model),
                   declared_prompts(model), document_fingerprint(model), str(graph.absolute()) if graph else "")

    def key(self, content_fingerprint: str) -> EmbeddingKey:
        """The cache key of a corpus (``dataset.corpus_fingerprint()``) or query set (``queries_fingerprint``):
        each with its side's prompt."""
        task = "query" if content_fingerprint.startswith(QUERIES_PREFIX) else "document"
        model = self.model_fingerprint if task == "query" else (self.document_fingerprint or self.model_fingerprint)
        return EmbeddingKey(model, content_fingerprint, self.max_length, self.pooling,
                            self.prompts.get(task, ""), self.similarity)


class EncoderMemo:
    """Facts of encoders loaded before, keyed by the model folder's files (names, sizes, mtimes) and the loading
    options, so that a warm ``sbmoe eval`` finds its cache entries without loading and hashing the weights, or
    opening an ONNX Runtime session.

    Only local model folders are memoised: a hub id has no files here to watch. Any change to the folder's files
    gives a new signature (a miss). Under an ONNX backend the embeddings also depend on the graph, which may sit
    in the export cache outside the folder: the entry records the graph's path, size and mtime, and a graph that
    is gone or rewritten (a new export, a new recipe, a new int8 file) makes the entry a miss; the graph's
    sha256 is part of the model fingerprint the entry holds, so a reloaded model keys new cache entries.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "encoders"

    def get(self, config: EncoderConfig) -> EncoderFacts | None:
        signature = encoder_signature(config)
        if signature is None:
            return None
        try:
            raw = json.loads((self.root / f"{signature}.json").read_text(encoding="utf-8"))
            stamp = raw.pop("graph_stamp", None)
            facts = EncoderFacts(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, OSError) as exc:  # a damaged entry is a miss; the next load rewrites it
            logger.warning("encoder memo %s unreadable (%s): the model is loaded", signature, reason_of(exc))
            return None
        if facts.graph and (stamp is None or file_stamp(Path(facts.graph)) != stamp):
            return None  # the graph was removed or rebuilt: load, and describe the new one
        return facts

    def put(self, config: EncoderConfig, facts: EncoderFacts) -> None:
        """Remember ``facts`` for ``config``; not those of a load that fell back from the backend ``auto`` resolves
        to (a failed export), which the next load may not repeat."""
        signature = encoder_signature(config)
        if signature is None or facts.backend != resolved_backend(config):
            return
        entry = asdict(facts)
        if facts.graph:
            entry["graph_stamp"] = file_stamp(Path(facts.graph))
        write_json(self.root / f"{signature}.json", entry)


def file_stamp(path: Path) -> list[int] | None:
    """[size, mtime in ns] of a file, None when it is gone: what tells a rewritten graph from the one described."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def resolved_backend(config: EncoderConfig) -> str | None:
    """The backend a load of ``config`` runs in, ``auto`` resolved from the model folder's files as ``load_encoder``
    resolves it; None for an unknown backend name or model."""
    from .aliases import ModelLoadError
    from .backend_choice import choose

    try:
        return choose(config.backend, config.model, config.device).backend
    except (ModelLoadError, ValueError):
        return None


def encoder_signature(config: EncoderConfig) -> str | None:
    """sha256 of a local model folder's file list (path, size, mtime) and the options that change embeddings,
    ``auto`` resolved as ``load_encoder`` would resolve it; None where no such signature exists (hub ids)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..version import __version__
    from .aliases import ModelLoadError, resolve_model_name
    from .backend_choice import onnxruntime_version

    try:
        folder = Path(resolve_model_name(config.model)).resolve()
    except ModelLoadError:
        return None
    backend = resolved_backend(config)
    if not folder.is_dir() or backend is None:
        return None
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            files.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    versions = {"sbmoe": __version__}
    for package in ("sentence-transformers", "transformers", "torch"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    if backend.startswith("onnx"):
        versions["onnxruntime"] = onnxruntime_version()
    described = {"folder": str(folder), "files": files, "pooling": config.pooling, "max_length": config.max_length,
                 "normalize": config.normalize, "backend": config.backend, "resolved_backend": backend,
                 "similarity": config.similarity,
                 "query_prompt": config.query_prompt, "document_prompt": config.document_prompt,
                 "versions": versions}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8")).hexdigest()[:32]
