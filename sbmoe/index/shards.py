"""Streamed, resumable corpus encoding into on-disk shards, and index building from them.

``<index>.shards/`` holds ``manifest.json`` (model, corpus, chunk size, dtype, dim) and one shard per
corpus chunk: ``shard-00007.npy`` (embeddings), ``shard-00007.ids.txt`` and ``shard-00007.json``, which
is written last and so marks the shard complete. A killed run restarts at the first incomplete shard;
peak memory is one chunk's text and embeddings plus the index, whatever the corpus size.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_file, reason_of
from ..data import BeirDataset, DataFormatError
from .faiss_index import DenseIndex, IndexMeta, IndexMismatchError, new_faiss_index
from .similarity import check_searchable, metric_name, prepare_vectors

logger = logging.getLogger(__name__)

SHARD_DTYPES = ("float32", "float16")


class ShardError(ValueError):
    """A shard folder written by another run, or a shard file that is damaged."""


@dataclass(frozen=True)
class ShardManifest:
    model_fingerprint: str
    corpus_fingerprint: str
    chunk_size: int
    dtype: str
    dim: int
    prompt: str = ""  # the document prompt the shards were encoded with

    @classmethod
    def read(cls, path: Path) -> ShardManifest:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ShardError(f"{path}: malformed shard manifest ({exc})") from None


def shard_paths(folder: Path, number: int) -> tuple[Path, Path, Path]:
    stem = folder / f"shard-{number:05d}"
    return stem.with_suffix(".npy"), Path(f"{stem}.ids.txt"), stem.with_suffix(".json")


def read_shard(folder: Path, number: int, manifest: ShardManifest) -> tuple[list[str], np.ndarray] | None:
    """A complete, consistent shard, None if it was never finished; a damaged one raises ShardError."""
    vectors_path, ids_path, marker_path = shard_paths(folder, number)
    if not marker_path.exists():
        return None
    redo = f"delete {marker_path} and rerun to encode that chunk again"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if not isinstance(marker, dict):
            raise ValueError(f"a JSON {type(marker).__name__}, not an object")
    except ValueError as exc:
        raise ShardError(f"{marker_path}: not a shard marker ({reason_of(exc)}); {redo}") from None
    try:
        vectors = np.load(vectors_path, mmap_mode="r")
        ids = ids_path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, ValueError) as exc:
        raise ShardError(f"{vectors_path}: unreadable shard ({reason_of(exc)}); {redo}") from None
    expected = (marker.get("rows"), manifest.dim, manifest.dtype)
    if (vectors.shape[0], vectors.shape[1] if vectors.ndim == 2 else None, str(vectors.dtype)) != expected \
            or len(ids) != marker.get("rows"):
        raise ShardError(f"{vectors_path}: shape {vectors.shape} / {vectors.dtype} / {len(ids)} ids do not match "
                         f"its marker ({marker.get('rows')} rows, dim {manifest.dim}, {manifest.dtype}); {redo}")
    return ids, vectors


def encode_to_shards(
    dataset: BeirDataset,
    folder: Path,
    manifest: ShardManifest,
    encode: Callable[[list[str]], np.ndarray],
    show_progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> int:
    """Encode every chunk that has no complete shard yet; returns the number of shards.

    With ``world`` processes (``torchrun``), process ``rank`` encodes chunks ``rank, rank + world, ...``
    only, into the same folder; the index is built once every process has finished.

    A malformed corpus removes the shard folder: its shards could never complete an index, and once the
    file is fixed its fingerprint no longer matches them.
    """
    try:
        return _encode_missing_shards(dataset, folder, manifest, encode, show_progress, rank, world)
    except DataFormatError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _encode_missing_shards(
    dataset: BeirDataset,
    folder: Path,
    manifest: ShardManifest,
    encode: Callable[[list[str]], np.ndarray],
    show_progress: bool,
    rank: int,
    world: int,
) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        existing = ShardManifest.read(manifest_path)
        if existing != manifest:
            raise ShardError(f"{folder} holds shards of another run ({existing}); remove it or pass --overwrite")
    else:
        with atomic_file(manifest_path) as handle:
            json.dump(asdict(manifest), handle, indent=2)
    total = dataset.corpus_size()
    count = 0
    with tqdm(total=total, desc=f"Encoding {dataset.name}", unit="doc", disable=not show_progress) as bar:
        for number, chunk in enumerate(dataset.iter_corpus_chunks(manifest.chunk_size)):
            count = number + 1
            if number % world != rank:  # another process's chunk
                bar.update(len(chunk))
                continue
            done = read_shard(folder, number, manifest)
            if done is not None:
                if done[0] != [doc.doc_id for doc in chunk]:
                    raise ShardError(f"{shard_paths(folder, number)[0]}: doc ids differ from the corpus chunk")
                bar.update(len(chunk))
                continue
            vectors = encode([doc.as_text() for doc in chunk]).astype(manifest.dtype)
            vectors_path, ids_path, marker_path = shard_paths(folder, number)
            with atomic_file(vectors_path, "wb", needed=vectors.nbytes) as handle:
                np.save(handle, vectors)
            with atomic_file(ids_path) as handle:
                handle.write("".join(f"{doc.doc_id}\n" for doc in chunk))
            with atomic_file(marker_path) as handle:
                json.dump({"rows": len(chunk), "first_doc": chunk[0].doc_id}, handle)
            bar.update(len(chunk))
    return count


def iter_shards(folder: Path, count: int, manifest: ShardManifest) -> Iterator[tuple[list[str], np.ndarray]]:
    for number in range(count):
        shard = read_shard(folder, number, manifest)
        if shard is None:
            raise ShardError(f"{shard_paths(folder, number)[2]}: shard {number} is missing")
        yield shard


def index_from_shards(folder: Path, count: int, manifest: ShardManifest, meta: IndexMeta,
                      train_size: int = 100_000, seed: int = 0) -> DenseIndex:
    """Add the shards to a faiss index one at a time; IVF/PQ quantizers train on a random sample first. Shards
    hold the model's raw embeddings; they are prepared for ``meta.similarity`` as they go in."""
    if meta.dim != manifest.dim:
        raise IndexMismatchError(f"shards hold {manifest.dim}-d vectors but the index expects {meta.dim}")
    check_searchable(meta.similarity, meta.model)
    meta.metric = metric_name(meta.similarity)
    index = new_faiss_index(meta.dim, meta.factory, meta.build_params, meta.similarity)
    if not index.is_trained:
        index.train(prepare_vectors(sample_vectors(folder, count, manifest, train_size, seed), meta.similarity))
    doc_ids: list[str] = []
    for ids, vectors in iter_shards(folder, count, manifest):
        index.add(prepare_vectors(vectors, meta.similarity))
        doc_ids.extend(ids)
    meta.count = len(doc_ids)
    built = DenseIndex(index, doc_ids, meta)
    built.apply_search_params(meta.search_params)
    return built


def sample_vectors(folder: Path, count: int, manifest: ShardManifest, size: int, seed: int) -> np.ndarray:
    """A uniform random sample of at most ``size`` vectors across all shards (for quantizer training)."""
    sizes = [len(ids) for ids, _ in iter_shards(folder, count, manifest)]
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    parts, offset = [], 0
    for (_, vectors), rows in zip(iter_shards(folder, count, manifest), sizes, strict=True):
        local = chosen[(chosen >= offset) & (chosen < offset + rows)] - offset
        parts.append(np.asarray(vectors[local], dtype=np.float32))
        offset += rows
    return np.ascontiguousarray(np.concatenate(parts))
