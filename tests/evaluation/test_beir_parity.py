"""BEIR parity beyond models with a Normalize layer: ``sbmoe eval`` equals BEIR's own pipeline (exact search with
the model's own score function) on a SciFact slice, for all-MiniLM-L6-v2 (Normalize, cosine) and
paraphrase-MiniLM-L3-v2 (cosine, no Normalize: raw inner products rank differently)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from sbmoe.evaluation.benchmark import evaluate_systems
from sbmoe.evaluation.systems import SystemsConfig, build_systems
from sbmoe.models.aliases import resolve_model_name
from sbmoe.models.encoder import EncoderConfig

pytestmark = pytest.mark.slow
TOLERANCE = 0.0005  # nDCG@10


@pytest.fixture(scope="module")
def scifact100(tmp_path_factory: pytest.TempPathFactory, scifact_dir: Path) -> Path:
    """The first 100 SciFact documents and the test queries judged against them."""
    from beir_slices import write_slice

    return write_slice(scifact_dir, tmp_path_factory.mktemp("data") / "scifact100", 100)


@functools.cache
def beir_ndcg10(model_path: str, data: Path, score_function: str) -> float:
    """nDCG@10 from BEIR's own pipeline: SentenceBERT, exact search, pytrec_eval."""
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(data)).load(split="test")
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(models.SentenceBERT(model_path), batch_size=64),
                                  score_function=score_function, k_values=[10])
    ndcg, *_ = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [10])
    return ndcg["NDCG@10"]


def sbmoe_ndcg10(alias: str, data: Path, similarity: str | None = None) -> float:
    config = SystemsConfig(models=[alias], encoder=EncoderConfig(similarity=similarity), use_cache=False,
                           show_progress=False)
    report = evaluate_systems(build_systems(config), [str(data)], ["nDCG@10"])
    return report.records[0].metrics["nDCG@10"]


@pytest.mark.parametrize("alias", ["minilm", "minilm-l3"])
def test_sbmoe_eval_equals_beir_with_the_models_own_score_function(alias: str, scifact100: Path) -> None:
    reference = beir_ndcg10(resolve_model_name(alias), scifact100, "cos_sim")  # both declare cosine
    assert sbmoe_ndcg10(alias, scifact100) == pytest.approx(reference, abs=TOLERANCE)


def test_the_parity_check_tells_inner_products_from_cosine(scifact100: Path) -> None:
    """The control: minilm-l3 scored by raw inner products is off BEIR's cosine figure, and equals BEIR's
    ``dot`` figure, so the test above fails when the declared similarity is ignored."""
    path = resolve_model_name("minilm-l3")
    dot = sbmoe_ndcg10("minilm-l3", scifact100, similarity="dot")
    assert abs(dot - beir_ndcg10(path, scifact100, "cos_sim")) > 5 * TOLERANCE
    assert dot == pytest.approx(beir_ndcg10(path, scifact100, "dot"), abs=TOLERANCE)
