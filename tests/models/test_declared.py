"""Every model encoded and scored as it declares: prompts on every encoding path equal sentence-transformers'
``encode_query`` / ``encode_document``; dot and euclidean models rank as a float64 brute-force reference ranks
them; manhattan is refused in one line; an index records its similarity and refuses another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_errors import fails_with_one_line
from sentence_transformers import SentenceTransformer

from sbmoe.data import BeirDataset
from sbmoe.evaluation.systems import dense_system
from sbmoe.index.builder import IndexConfig, build_index
from sbmoe.index.faiss_index import DenseIndex, IndexMismatchError
from sbmoe.index.retriever import Retriever
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts

PROMPTS = {"query": "query: ", "document": "passage: "}
TOLERANCE = 1e-5


def save_declaring(tiny_bert_dir: Path, folder: Path, similarity: str | None = None, prompts: dict | None = None,
                   include_prompt: bool = True, default_prompt_name: str | None = None) -> Path:
    """The tiny BERT as a sentence-transformers folder whose config declares ``similarity`` and ``prompts``."""
    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    model[1].include_prompt = include_prompt
    model.prompts.update(prompts or {})
    model.default_prompt_name = default_prompt_name
    model.similarity_fn_name = similarity
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def prompted_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_declaring(tiny_bert_dir, tmp_path_factory.mktemp("prompted") / "model", prompts=PROMPTS)


def texts_of(folder: Path) -> tuple[dict[str, str], list[str]]:
    dataset = BeirDataset.open(str(folder))
    queries, _ = dataset.load_split("test")
    return queries, [doc.as_text() for chunk in dataset.iter_corpus_chunks(1000) for doc in chunk]


def test_saved_declarations_are_read(prompted_dir: Path) -> None:
    config = json.loads((prompted_dir / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["query"] == "query: "
    model = load_encoder(EncoderConfig(model=str(prompted_dir)))
    assert model.prompts["document"] == "passage: " and model.similarity_fn_name == "cosine"


@pytest.mark.parametrize("include_prompt", [True, False])
def test_one_process_encoding_equals_encode_query_and_encode_document(tiny_bert_dir: Path, scifact_slice: Path,
                                                                       tmp_path: Path, include_prompt: bool) -> None:
    folder = save_declaring(tiny_bert_dir, tmp_path / "m", prompts=PROMPTS, include_prompt=include_prompt)
    model = load_encoder(EncoderConfig(model=str(folder)))
    reference = SentenceTransformer(str(folder), device="cpu")
    queries, documents = texts_of(scifact_slice)
    query_texts = list(queries.values())
    ours_q = encode_texts(model, query_texts, 16, task="query")
    ours_d = encode_texts(model, documents, 16, task="document")
    np.testing.assert_allclose(ours_q, reference.encode_query(query_texts), atol=TOLERANCE)
    np.testing.assert_allclose(ours_d, reference.encode_document(documents), atol=TOLERANCE)
    unprompted = reference.encode(query_texts, prompt="")
    assert np.abs(ours_q - unprompted).max() > 100 * TOLERANCE  # the prompt changes the vectors: a real check
    np.testing.assert_allclose(Retriever(model, DenseIndex.from_embeddings(
        ours_d, [str(i) for i in range(len(documents))], index_meta(model))).encode_queries(query_texts),
        ours_q, atol=0)


def index_meta(model: SentenceTransformer):
    from sbmoe.index.faiss_index import index_meta_for

    return index_meta_for(model, "m")


def test_default_prompt_name_is_applied_as_encode_query_applies_it(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = save_declaring(tiny_bert_dir, tmp_path / "m", prompts={"classification": "classify: "},
                            default_prompt_name="classification")
    model = load_encoder(EncoderConfig(model=str(folder)))
    reference = SentenceTransformer(str(folder), device="cpu")
    texts = ["does aspirin prevent heart attacks?", "protein folding in yeast"]
    np.testing.assert_allclose(encode_texts(model, texts, task="query"), reference.encode_query(texts),
                               atol=TOLERANCE)
    np.testing.assert_allclose(encode_texts(model, texts, task=None), reference.encode(texts), atol=TOLERANCE)


def test_prompt_overrides_reach_the_encoder(prompted_dir: Path) -> None:
    model = load_encoder(EncoderConfig(model=str(prompted_dir), query_prompt="search_query: ", document_prompt=""))
    reference = SentenceTransformer(str(prompted_dir), device="cpu")
    texts = ["does aspirin prevent heart attacks?"]
    np.testing.assert_allclose(encode_texts(model, texts, task="query"),
                               reference.encode(texts, prompt="search_query: "), atol=TOLERANCE)
    np.testing.assert_allclose(encode_texts(model, texts, task="document"), reference.encode(texts, prompt=""),
                               atol=TOLERANCE)


def stored_vectors(index_dir: Path) -> np.ndarray:
    index = DenseIndex.load(index_dir).index
    return index.reconstruct_n(0, index.ntotal)


def test_index_paths_store_the_prompted_documents(prompted_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    """One process, the multi-process pool (``--devices cpu,cpu``) and the warm cache give the same vectors."""
    reference = SentenceTransformer(str(prompted_dir), device="cpu")
    _, documents = texts_of(scifact_slice)
    expected = reference.encode_document(documents, normalize_embeddings=True)  # cosine: stored normalised
    config = EncoderConfig(model=str(prompted_dir), batch_size=16)
    for name, devices in (("one", ()), ("pool", ("cpu", "cpu"))):  # "one" fills the embedding cache
        build_index(IndexConfig(str(scifact_slice), tmp_path / name, config, devices=devices,
                                use_cache=name == "one", show_progress=False))
        np.testing.assert_allclose(stored_vectors(tmp_path / name), expected, atol=TOLERANCE, err_msg=name)
    build_index(IndexConfig(str(scifact_slice), tmp_path / "warm", config, show_progress=False))  # from the cache
    np.testing.assert_allclose(stored_vectors(tmp_path / "warm"), expected, atol=TOLERANCE)
    meta = json.loads((tmp_path / "warm" / "meta.json").read_text())
    assert meta["similarity"] == "cosine" and meta["prompts"] == {"query": "query: ", "document": "passage: "}


def test_onnx_backend_applies_the_prompts(prompted_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = load_encoder(EncoderConfig(model=str(prompted_dir), backend="onnx"))
    reference = SentenceTransformer(str(prompted_dir), device="cpu")
    texts = ["does aspirin prevent heart attacks?", "a longer query about protein folding in yeast cells"]
    np.testing.assert_allclose(encode_texts(model, texts, task="query"), reference.encode_query(texts), atol=TOLERANCE)


def test_warm_eval_reads_prompted_query_embeddings(prompted_dir: Path, scifact_slice: Path) -> None:
    dataset = BeirDataset.open(str(scifact_slice))
    queries, _ = dataset.load_split("test")
    config = EncoderConfig(model=str(prompted_dir), batch_size=16)
    cold = dense_system(config, show_progress=False)(dataset, queries, 10)
    warm = dense_system(config, show_progress=False)(dataset, queries, 10)
    other = dense_system(EncoderConfig(model=str(prompted_dir), batch_size=16, query_prompt=""),
                         show_progress=False)(dataset, queries, 10)
    assert warm == cold
    assert other != cold  # the query prompt is part of the cache key, not served from the prompted entry


def brute_force_top(queries: np.ndarray, docs: np.ndarray, similarity: str, k: int) -> tuple[list, np.ndarray]:
    q, d = queries.astype(np.float64), docs.astype(np.float64)
    distances = np.sqrt(((q[:, None, :] - d[None, :, :]) ** 2).sum(-1))
    scores = q @ d.T if similarity == "dot" else -distances
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [list(row) for row in order], np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("similarity", ["dot", "euclidean"])
def test_declared_dot_and_euclidean_rank_as_float64_brute_force(tiny_bert_dir: Path, scifact_slice: Path,
                                                                tmp_path: Path, similarity: str) -> None:
    folder = save_declaring(tiny_bert_dir, tmp_path / "m", similarity=similarity)
    model = load_encoder(EncoderConfig(model=str(folder), batch_size=16))
    assert model.similarity_fn_name == similarity
    queries, documents = texts_of(scifact_slice)
    qids = list(queries)
    doc_vectors = encode_texts(model, documents, 16, task="document")
    query_vectors = encode_texts(model, [queries[q] for q in qids], 16, task="query")
    expected_rows, expected_scores = brute_force_top(query_vectors, doc_vectors, similarity, 10)

    index = build_index(IndexConfig(str(scifact_slice), tmp_path / "idx", EncoderConfig(model=str(folder)),
                                    use_cache=False, show_progress=False))
    assert index.meta.similarity == similarity and index.meta.metric == ("l2" if similarity == "euclidean" else "ip")
    run = Retriever.from_index(tmp_path / "idx").search(queries, k=10)
    row_of = {doc_id: row for row, doc_id in enumerate(index.doc_ids)}
    for qid, rows, scores in zip(qids, expected_rows, expected_scores, strict=True):
        ranked = run[qid]
        assert [row_of[d] for d in ranked] == rows, qid
        np.testing.assert_allclose(list(ranked.values()), scores, rtol=1e-4, atol=1e-4)


def test_manhattan_is_refused_in_one_line(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path) -> None:
    folder = save_declaring(tiny_bert_dir, tmp_path / "m", similarity="manhattan")
    line = fails_with_one_line("index", scifact_slice, "--output", tmp_path / "idx", "--model", folder, "--no-cache")
    assert "similarity_fn_name 'manhattan'" in line and str(folder) in line
    assert not (tmp_path / "idx").exists() and not (tmp_path / "idx.shards").exists()


def test_index_refuses_search_under_another_similarity(tiny_bert_dir: Path, scifact_slice: Path,
                                                       tmp_path: Path) -> None:
    build_index(IndexConfig(str(scifact_slice), tmp_path / "idx", EncoderConfig(model=str(tiny_bert_dir)),
                            use_cache=False, show_progress=False))
    assert DenseIndex.load(tmp_path / "idx").meta.similarity == "cosine"  # sentence-transformers' default
    with pytest.raises(IndexMismatchError, match="built for cosine similarity"):
        Retriever.from_index(tmp_path / "idx", similarity="dot")
    line = fails_with_one_line("search", "--index", tmp_path / "idx", "--query", "aspirin", "--similarity", "dot")
    assert "built for cosine similarity" in line


def test_legacy_index_without_similarity_is_read_as_dot(tiny_bert_dir: Path, scifact_slice: Path,
                                                        tmp_path: Path) -> None:
    build_index(IndexConfig(str(scifact_slice), tmp_path / "idx", EncoderConfig(model=str(tiny_bert_dir),
                                                                                similarity="dot"),
                            use_cache=False, show_progress=False))
    meta_file = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["similarity"], meta["prompts"]
    meta_file.write_text(json.dumps(meta))
    assert DenseIndex.load(tmp_path / "idx").meta.similarity == "dot"
    assert Retriever.from_index(tmp_path / "idx").search(["aspirin"], k=3)["0"]
