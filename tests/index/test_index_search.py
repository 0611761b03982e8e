"""FAISS index round trip, mismatch refusal, atomic writes, search against brute-force numpy, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sbmoe.atomic import WriteFailedError
from sbmoe.data import BeirDataset
from sbmoe.index.builder import IndexConfig, build_index
from sbmoe.index.faiss_index import DenseIndex, IndexMeta, IndexMismatchError
from sbmoe.index.retriever import Retriever
from sbmoe.models import encoding as retriever_module
from sbmoe.models.embedding_cache import CorpusEmbeddingCache
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_corpus, encode_texts


def random_meta(dim: int, fingerprint: str = "f" * 64) -> IndexMeta:
    return IndexMeta(model="toy", model_fingerprint=fingerprint, pooling="mean", dim=dim, normalize=False, count=0)


def test_index_round_trip_gives_identical_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    ids = [f"doc{i}" for i in range(200)]
    index = DenseIndex.from_embeddings(vectors, ids, random_meta(16))
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["doc_ids.txt", "index.faiss", "meta.json"]
    loaded = DenseIndex.load(tmp_path / "idx")
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    assert loaded.search(queries, 10)[1] == index.search(queries, 10)[1]
    assert loaded.meta.count == 200 and loaded.meta.dim == 16


def test_index_refuses_other_encoder_and_wrong_dims(tmp_path: Path) -> None:
    index = DenseIndex.from_embeddings(np.eye(4, dtype=np.float32), list("abcd"), random_meta(4))
    with pytest.raises(IndexMismatchError, match="encoder produces 8-d embeddings but the index holds 4-d"):
        index.check_encoder("f" * 64, 8)
    with pytest.raises(IndexMismatchError, match="encoder does not match the one that built this index"):
        index.check_encoder("0" * 64, 4)
    with pytest.raises(IndexMismatchError, match="do not match dim 4"):
        index.search(np.zeros((1, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex.from_embeddings(np.zeros((0, 4), dtype=np.float32), [], random_meta(4))


def test_index_save_is_atomic_and_does_not_clobber(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = DenseIndex.from_embeddings(np.eye(4, dtype=np.float32), list("abcd"), random_meta(4))
    index.save(tmp_path / "idx")
    with pytest.raises(FileExistsError, match="already exists"):
        index.save(tmp_path / "idx")

    def broken_write(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("faiss.write_index", broken_write)
    with pytest.raises(WriteFailedError, match="idx: write failed: disk full"):  # one line for the user
        index.save(tmp_path / "idx", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left behind
    assert DenseIndex.load(tmp_path / "idx").doc_ids == list("abcd")  # the old index survived
    with pytest.raises(WriteFailedError):
        index.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_search_equals_brute_force_numpy(tiny_encoder, scifact_slice: Path) -> None:
    dataset = BeirDataset.open(scifact_slice)
    retriever = Retriever.from_dataset(tiny_encoder, dataset, batch_size=8, show_progress=False)
    queries, _ = dataset.load_split("test")
    run = retriever.search(queries, k=10)

    docs = list(dataset.iter_corpus())
    doc_matrix = tiny_encoder.encode([d.as_text() for d in docs]).astype(np.float64)
    query_matrix = tiny_encoder.encode(list(queries.values())).astype(np.float64)
    scores = tiny_encoder.similarity(query_matrix, doc_matrix).numpy()  # the declared similarity (cosine), float64
    position = {d.doc_id: i for i, d in enumerate(docs)}
    for row, qid in enumerate(queries):
        true_top = np.sort(scores[row])[::-1][:10]
        np.testing.assert_allclose(list(run[qid].values()), true_top, atol=1e-4)  # the right ranks
        for doc_id, score in run[qid].items():  # and the right documents at them
            assert abs(scores[row, position[doc_id]] - score) < 1e-4


def test_drop_self_hits_removes_the_query_id_and_keeps_k(tiny_bert_dir: Path, scifact_slice: Path) -> None:
    dataset = BeirDataset.open(scifact_slice)
    cosine_model = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    retriever = Retriever.from_dataset(cosine_model, dataset, show_progress=False)
    first = next(dataset.iter_corpus())
    queries = {first.doc_id: first.as_text()}  # the document itself, under its own id
    assert next(iter(retriever.search(queries, k=5)[first.doc_id])) == first.doc_id
    dropped = retriever.search(queries, k=5, drop_self_hits=True)[first.doc_id]
    assert first.doc_id not in dropped and len(dropped) == 5


def test_build_index_and_reopen_with_meta_model(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    config = IndexConfig(dataset=str(scifact_slice), output=tmp_path / "idx", show_progress=False,
                         encoder=EncoderConfig(model=str(tiny_bert_dir)))
    built = build_index(config)
    reopened = Retriever.from_index(tmp_path / "idx")
    assert reopened.index.doc_ids == built.doc_ids
    other = load_encoder(EncoderConfig(model=str(tiny_bert_dir), pooling="cls"))
    with pytest.raises(IndexMismatchError, match="does not match"):
        Retriever(other, reopened.index)


def test_corpus_embeddings_come_from_cache_the_second_time(tiny_encoder, scifact_slice: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = BeirDataset.open(scifact_slice)
    cache = CorpusEmbeddingCache()
    ids, first = encode_corpus(tiny_encoder, dataset, cache=cache, show_progress=False)
    assert len(ids) == 50 and first.shape == (50, 32)

    def must_not_encode(*_args: object, **_kwargs: object) -> np.ndarray:
        raise AssertionError("encoded again despite a cache hit")

    monkeypatch.setattr(retriever_module, "encode_texts", must_not_encode)
    ids2, second = encode_corpus(tiny_encoder, dataset, cache=cache, show_progress=False)
    assert ids2 == ids and np.array_equal(first, second)
    np.testing.assert_allclose(second[:3], encode_texts(tiny_encoder, [d.as_text() for d in
                                                                     list(dataset.iter_corpus())[:3]]), atol=1e-6)
