"""Routing analytics against a per-item loop over the head's own router; the `sbmoe routing` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.evaluation.routing import co_routing, dataset_routing, entropy, shares
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.pipeline import pooling_prefix, with_head
from sbmoe.models.sbmoe_head import SBMoEHead


def test_co_routing_and_entropy_by_hand() -> None:
    queries = {"q1": 0, "q2": 1, "q3": 2}
    docs = {"a": 0, "b": 1, "c": 0, "d": 2}
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"b": 1, "c": 0}, "q3": {"zzz": 1}}  # c is not relevant; zzz unknown
    assert co_routing(queries, docs, qrels) == pytest.approx((0.5 + 1.0) / 2)
    p = shares(torch.tensor([0, 0, 1, 3]).numpy(), 4)
    assert list(p) == [0.5, 0.25, 0.0, 0.25]
    assert entropy(p) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    collapsed = entropy(shares(torch.tensor([2, 2, 2]).numpy(), 4))  # every text on one expert
    assert collapsed == 0.0 and math.copysign(1.0, collapsed) == 1.0 and f"{collapsed:.2f}" == "0.00"


@pytest.fixture
def sbmoe_model(tiny_bert_dir: Path):
    torch.manual_seed(5)
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir), normalize=True))
    model = with_head(base, SBMoEHead(32, num_experts=3, gate="scaled"))
    model.eval()
    return model


def test_dataset_routing_equals_a_loop_over_the_router(sbmoe_model, scifact_slice: Path) -> None:
    dataset = BeirDataset.open(str(scifact_slice))
    result = dataset_routing(sbmoe_model, dataset, None, 16, None, False)
    head = sbmoe_model[2]
    prefix = pooling_prefix(sbmoe_model)
    docs = list(dataset.iter_corpus())
    pooled = torch.from_numpy(encode_texts(prefix, [d.as_text() for d in docs]))
    def top(v: torch.Tensor) -> int:  # the head standardises what its gate reads
        with torch.no_grad():
            return int(torch.argmax(head.router.gate(F.layer_norm(v, (32,)))))

    expert = {d.doc_id: top(pooled[i]) for i, d in enumerate(docs)}
    counts = [sum(1 for e in expert.values() if e == k) for k in range(3)]
    assert result.document_shares == pytest.approx([c / len(docs) for c in counts], abs=1e-4)
    queries, qrels = dataset.load_split("test")
    q_pooled = torch.from_numpy(encode_texts(prefix, list(queries.values())))
    q_expert = {q: top(q_pooled[i]) for i, q in enumerate(queries)}
    per_query = [sum(expert[d] == q_expert[q] for d, r in qrels[q].items() if r > 0)
                 / sum(1 for r in qrels[q].values() if r > 0) for q in queries]
    assert result.co_routing == pytest.approx(sum(per_query) / len(per_query), abs=1e-4)
    assert result.judged_queries == len(queries)
    assert 0.0 <= result.normalized_entropy <= 1.0


def test_routing_command_writes_json_and_png(sbmoe_model, scifact_slice: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    sbmoe_model.save(str(folder))
    out = tmp_path / "routing"
    result = CliRunner().invoke(app, ["routing", str(folder), "--datasets", str(scifact_slice),
                                      "--output-dir", str(out), "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "routing.json").read_text(encoding="utf-8"))
    assert report["datasets"][0]["num_experts"] == 3
    assert sum(report["datasets"][0]["document_shares"]) == pytest.approx(1.0, abs=1e-3)
    assert (out / "routing.png").stat().st_size > 1000


def test_routing_command_refuses_a_model_without_head(tiny_bert_dir: Path, scifact_slice: Path) -> None:
    result = CliRunner().invoke(app, ["routing", str(tiny_bert_dir), "--datasets", str(scifact_slice)])
    assert result.exit_code == 1
    assert "no SB-MoE head" in result.output and "Traceback" not in result.output
