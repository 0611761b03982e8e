"""A FAISS index on disk with its doc ids and the metadata needed to refuse a mismatched encoder.

Layout of an index folder: ``index.faiss``, ``doc_ids.txt`` (one id a line, in FAISS row order) and
``meta.json``. The folder is written beside its final path and renamed into place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_dir
from ..runs import Run, SelfHits, top_hits
from ..version import __version__
from .similarity import (
    LEGACY_SIMILARITY,
    check_searchable,
    faiss_metric,
    metric_name,
    prepare_vectors,
    scores_from_faiss,
)

if TYPE_CHECKING:  # faiss and the encoder stack load when an index is built or read, not with IndexType
    import faiss
    from sentence_transformers import SentenceTransformer

META_FILE = "meta.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.txt"


class IndexMismatchError(ValueError):
    """The index was built with a different encoder or dimension than the one searching it."""


@dataclass
class IndexMeta:
    """What built the index; stored as meta.json."""

    model: str
    model_fingerprint: str
    pooling: str
    dim: int
    normalize: bool
    count: int
    max_length: int | None = None
    factory: str = "Flat"
    metric: str = "ip"
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    corpus_fingerprint: str | None = None
    sbmoe_version: str = __version__
    backend: str = "torch"  # what ran the encoder (torch, onnx, onnx-int8); search reuses it
    dataset: str | None = None  # the corpus it indexes (registry name or folder): titles and texts of hits
    similarity: str = LEGACY_SIMILARITY  # cosine | dot | euclidean: what the vectors are stored and scored for
    prompts: dict[str, str] = field(default_factory=dict)  # {"query", "document"} prompts it was built with

    @classmethod
    def from_json(cls, path: Path) -> IndexMeta:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexMismatchError(f"{path}: not found; is this an sbmoe index folder?") from None
        except json.JSONDecodeError as exc:
            raise IndexMismatchError(f"{path}: invalid JSON ({exc.msg})") from None
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        missing = {"model", "model_fingerprint", "pooling", "dim", "normalize", "count"} - set(known)
        if missing:
            raise IndexMismatchError(f"{path}: missing keys {sorted(missing)}")
        return cls(**known)


def read_faiss_file(path: Path) -> faiss.Index:
    """``faiss.read_index`` with its C++ error (truncated file, another format) turned into one line."""
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        reason = re.split(r" at \S+:\d+: ", str(exc).strip())[-1].removeprefix("Error: ").splitlines()[0]
        reason = re.sub(r" \([^()]*\)$", "", re.sub(r"^'[^']*' failed: ", "", reason))  # assertion text, errno
        raise IndexMismatchError(f"{path}: not a readable FAISS index, truncated or of another format ({reason})") \
            from None


INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")


@dataclass(frozen=True)
class IndexType:
    """An index type sbmoe names and its shape parameters; ``factory`` gives the faiss factory string."""

    kind: str = "flat"
    hnsw_m: int = 32
    nlist: int = 1024
    pq_m: int = 48
    pq_bits: int = 8

    def factory(self) -> str:
        factories = {"flat": "Flat", "hnsw": f"HNSW{self.hnsw_m},Flat", "ivf": f"IVF{self.nlist},Flat",
                     "ivfpq": f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}"}
        if self.kind not in factories:
            raise ValueError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        return factories[self.kind]


def factory_string(kind: str, **shape: int) -> str:
    """faiss index-factory string of an index type: flat, hnsw, ivf, ivfpq (``shape``: IndexType fields)."""
    return IndexType(kind, **shape).factory()


def index_meta_for(model: SentenceTransformer, model_name: str, factory: str = "Flat") -> IndexMeta:
    from ..models.declared import declared_prompts, declared_similarity
    from ..models.fingerprint import document_fingerprint
    from ..models.onnx_backend import backend_of
    from ..models.pipeline import normalizes, pooling_mode

    return IndexMeta(
        model=model_name,
        model_fingerprint=document_fingerprint(model),  # what built the stored vectors
        pooling=pooling_mode(model),
        dim=model.get_embedding_dimension(),
        normalize=normalizes(model),
        count=0,
        max_length=model.max_seq_length,
        factory=factory,
        metric=metric_name(declared_similarity(model)),
        backend=backend_of(model),
        similarity=declared_similarity(model),
        prompts=declared_prompts(model),
    )


def new_faiss_index(dim: int, factory: str, build_params: dict[str, Any] | None = None,
                    similarity: str = "dot") -> faiss.Index:
    """An empty index of any faiss factory type for ``similarity`` (inner product, or L2 for euclidean), with
    its build-time parameters set.

    The one place an index is created: in-memory builds, builds from shards and the benchmark use it.
    """
    import faiss

    index = faiss.index_factory(dim, factory, faiss_metric(similarity))
    for name, value in (build_params or {}).items():
        if name != "efConstruction":
            raise ValueError(f"unknown index build parameter {name!r}")
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is None:
            raise ValueError(f"efConstruction applies to HNSW indexes, not {type(index).__name__}")
        hnsw.efConstruction = int(value)
    return index


class DenseIndex:
    """FAISS index plus doc ids. Vectors go in and queries are searched as ``meta.similarity`` scores them
    (``similarity.prepare_vectors``), so callers pass raw model embeddings on both sides."""

    def __init__(self, index: faiss.Index, doc_ids: list[str], meta: IndexMeta) -> None:
        if index.ntotal != len(doc_ids):
            raise IndexMismatchError(f"index holds {index.ntotal} vectors but {len(doc_ids)} doc ids")
        if index.d != meta.dim:
            raise IndexMismatchError(f"index dimension {index.d} differs from meta.json's {meta.dim}")
        self.index = index
        self.doc_ids = doc_ids
        self.meta = meta

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, doc_ids: list[str], meta: IndexMeta) -> DenseIndex:
        """Build an index of type ``meta.factory`` (a faiss index-factory string) over ``embeddings``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != meta.dim:
            raise IndexMismatchError(f"embeddings of shape {embeddings.shape} do not match dim {meta.dim}")
        if len(doc_ids) == 0:
            raise ValueError("cannot build an index over an empty corpus")
        check_searchable(meta.similarity, meta.model)
        meta.metric = metric_name(meta.similarity)
        index = new_faiss_index(meta.dim, meta.factory, meta.build_params, meta.similarity)
        vectors = prepare_vectors(embeddings, meta.similarity)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        meta.count = len(doc_ids)
        built = cls(index, list(doc_ids), meta)
        built.apply_search_params(meta.search_params)
        return built

    def save(self, path: Path, overwrite: bool = False) -> Path:
        """Write the three files into a temporary folder and rename it to ``path``."""
        import faiss

        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            with open(tmp / INDEX_FILE, "wb") as handle:  # through Python: faiss's fwrite ignores a full disk
                writer = faiss.PyCallbackIOWriter(handle.write)
                faiss.write_index(self.index, writer)
                del writer
            (tmp / IDS_FILE).write_text("".join(f"{d}\n" for d in self.doc_ids), encoding="utf-8")
            (tmp / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> DenseIndex:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: index folder not found")
        meta = IndexMeta.from_json(path / META_FILE)
        if not (path / INDEX_FILE).is_file():
            raise IndexMismatchError(f"{path / INDEX_FILE}: not found")
        index = read_faiss_file(path / INDEX_FILE)
        doc_ids = (path / IDS_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        loaded = cls(index, doc_ids, meta)
        loaded.apply_search_params(meta.search_params)
        return loaded

    def check_encoder(self, fingerprint: str, dim: int, similarity: str | None = None) -> None:
        """Refuse to search with an encoder other than the one that built the index, or with another similarity
        than the one its vectors were stored for."""
        if dim != self.meta.dim:
            raise IndexMismatchError(
                f"encoder produces {dim}-d embeddings but the index holds {self.meta.dim}-d vectors "
                f"(built with {self.meta.model})"
            )
        if fingerprint != self.meta.model_fingerprint:
            raise IndexMismatchError(
                f"encoder does not match the one that built this index ({self.meta.model}, fingerprint "
                f"{self.meta.model_fingerprint[:12]}, got {fingerprint[:12]}); re-index or pass the same model"
            )
        if similarity is not None and similarity != self.meta.similarity:
            raise IndexMismatchError(
                f"index was built for {self.meta.similarity} similarity (meta.json), but {self.meta.model} is "
                f"scored with {similarity}; re-index, or pass --similarity {self.meta.similarity}"
            )

    def apply_search_params(self, params: dict[str, Any]) -> None:
        """Set faiss search-time parameters such as ``nprobe`` or ``efSearch``."""
        if params:
            import faiss

            space = faiss.ParameterSpace()
            for name, value in params.items():
                try:
                    space.set_index_parameter(self.index, name, value)
                except RuntimeError as exc:
                    raise ValueError(f"search parameter {name!r} does not apply to {self.meta.factory} "
                                     f"indexes") from exc
            self.meta.search_params = {**self.meta.search_params, **params}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` scores and doc ids for each query row (fewer where the index holds fewer)."""
        if queries.ndim != 2 or queries.shape[1] != self.meta.dim:
            raise IndexMismatchError(f"query embeddings of shape {queries.shape} do not match dim {self.meta.dim}")
        k = min(k, self.index.ntotal)
        raw, rows = self.index.search(prepare_vectors(queries, self.meta.similarity), k)
        ids = [[self.doc_ids[r] for r in row if r >= 0] for row in rows]
        return scores_from_faiss(raw, self.meta.similarity), ids

    def run(self, qids: Sequence[str], embeddings: np.ndarray, k: int, drop_self_hits: SelfHits = False) -> Run:
        """{query id: {doc id: score}} for query embeddings (rows in ``qids`` order), the top ``k`` of each.

        With ``drop_self_hits`` one more hit is fetched and a document whose id is the query's is skipped
        (BEIR's convention). Shared by ``Retriever.search`` and the evaluation's cached-embedding path.
        """
        scores, ids = self.search(embeddings, k + 1 if drop_self_hits else k)
        return {qid: top_hits(zip(row_ids, map(float, row_scores), strict=False), qid, k, drop_self_hits)
                for qid, row_scores, row_ids in zip(qids, scores, ids, strict=True)}
