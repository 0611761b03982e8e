"""``sbmoe index``: encode a corpus chunk by chunk into on-disk shards, build a FAISS index, save it."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import distributed
from ..data import BeirDataset
from ..models.choices import AUTO
from ..models.embedding_cache import CorpusEmbeddingCache
from ..models.encoder import EncoderConfig, load_encoder
from .faiss_index import DenseIndex, index_meta_for
from .shards import SHARD_DTYPES, ShardManifest, encode_to_shards, index_from_shards, iter_shards
from .similarity import check_searchable

if TYPE_CHECKING:  # the encoder stack loads with the first model, not with IndexConfig
    from sentence_transformers import SentenceTransformer


@contextmanager
def corpus_encoder(model: SentenceTransformer, batch_size: int,
                   devices: Sequence[str] = ()) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """A texts -> embeddings function: in this process, or over several devices through
    sentence-transformers' multi-process pool (``["cuda:0", "cuda:1"]``, ``["cpu", "cpu"]``). Both apply the
    model's document prompt (``encode_texts`` with task "document" resolves it as ``encode_document`` does)."""
    if len(devices) <= 1:
        from ..models.encoding import encode_texts

        if devices:
            model.to(devices[0])
        yield lambda texts: encode_texts(model, texts, batch_size, task="document")
        return
    pool = model.start_multi_process_pool(list(devices))
    try:
        yield lambda texts: np.asarray(model.encode_document(texts, pool=pool, batch_size=batch_size),
                                       dtype=np.float32)
    finally:
        model.stop_multi_process_pool(pool)


@dataclass
class IndexConfig:
    """Arguments of ``sbmoe index``."""

    dataset: str
    output: Path
    encoder: EncoderConfig
    factory: str = "Flat"
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 50_000
    shard_dtype: str = "float32"
    devices: tuple[str, ...] = ()
    keep_shards: bool = False
    use_cache: bool = True
    overwrite: bool = False
    show_progress: bool = True

    @property
    def shard_dir(self) -> Path:
        return Path(f"{self.output}.shards")


def build_index(config: IndexConfig, model: SentenceTransformer | None = None) -> DenseIndex | None:
    """Encode ``config.dataset``'s corpus chunk by chunk into shards beside ``config.output``, build the
    index from them, and write the index folder atomically.

    A rerun after a kill skips the complete shards. With the embedding cache, a corpus already encoded
    by the same model is indexed straight from the cache, and a fresh float32 encoding fills the cache.
    Under ``torchrun`` every process encodes its share of the chunks (on ``cuda:<LOCAL_RANK>`` when there
    are GPUs), then rank 0 builds and writes the index and returns it; the other ranks return None.
    """
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    if config.shard_dtype not in SHARD_DTYPES:
        raise ValueError(f"unknown shard dtype {config.shard_dtype!r}; choose one of {', '.join(SHARD_DTYPES)}")
    if config.chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {config.chunk_size}")
    from ..models.encoding import embedding_key

    dataset = BeirDataset.open(config.dataset)
    encoder = config.encoder
    if encoder.backend == AUTO and (config.devices or distributed.world_size() > 1):
        encoder = replace(encoder, backend="torch")  # the model moves to each device, which only torch's can do
    model = model if model is not None else load_encoder(encoder)
    meta = index_meta_for(model, config.encoder.model, config.factory)
    check_searchable(meta.similarity, config.encoder.model)  # before any encoding
    meta.corpus_fingerprint = dataset.corpus_fingerprint()
    named = Path(config.dataset)
    meta.dataset = str(named.resolve()) if named.is_dir() else str(config.dataset)  # a folder, or a registry name
    meta.build_params, meta.search_params = dict(config.build_params), dict(config.search_params)
    cache = CorpusEmbeddingCache() if config.use_cache else None
    key = embedding_key(model, dataset) if cache is not None else None
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is not None:
        if not distributed.is_main():
            return None
        index = DenseIndex.from_embeddings(hit[1], hit[0], meta)
    else:
        manifest = ShardManifest(meta.model_fingerprint, meta.corpus_fingerprint, config.chunk_size,
                                 config.shard_dtype, meta.dim, meta.prompts.get("document", ""))
        parallel = distributed.init_process_group()
        devices = config.devices or ((distributed.local_device(),) if parallel else ())
        with corpus_encoder(model, config.encoder.batch_size, devices) as encode:
            count = encode_to_shards(dataset, config.shard_dir, manifest, encode, config.show_progress,
                                     distributed.rank(), distributed.world_size())
        distributed.barrier()  # every shard is complete
        if not distributed.is_main():
            return None
        index = index_from_shards(config.shard_dir, count, manifest, meta)
        if cache is not None and key is not None and config.shard_dtype == "float32":
            cache.put_stream(key, iter_shards(config.shard_dir, count, manifest), index.meta.count, meta.dim)
    index.save(output, overwrite=config.overwrite)
    if not config.keep_shards:
        shutil.rmtree(config.shard_dir, ignore_errors=True)
    return index
