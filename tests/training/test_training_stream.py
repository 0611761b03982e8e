"""Streaming training data: the dev hold-out, the training stream over the other rows, resuming at a row
offset, and ``sbmoe train`` on MS MARCO id triples (collection + queries files) end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.training.config import TrainConfig
from sbmoe.training.pairs import triples_data


def text_triples(path: Path, rows: int) -> list[tuple[str, str, str]]:
    triples = [(f"query {i}", f"positive {i}", f"negative {i}") for i in range(rows)]
    path.write_text("".join("\t".join(t) + "\n" for t in triples), encoding="utf-8")
    return triples


@pytest.mark.parametrize(("rows", "fraction", "cap", "held"), [(40, 0.1, 1000, 4), (500, 0.1, 7, 7), (3, 0.0, 10, 0)])
def test_dev_hold_out_and_training_stream_cover_the_file_once(tmp_path: Path, rows: int, fraction: float, cap: int,
                                                              held: int) -> None:
    triples = text_triples(tmp_path / "t.tsv", rows)
    config = TrainConfig(data=str(tmp_path / "t.tsv"), dev_fraction=fraction, dev_max_rows=cap, shuffle_buffer=16,
                         seed=4)
    data = triples_data(config)
    dev = {int(qid[1:]) for qid in data.dev_queries}
    assert len(dev) == held == len(data.stream.dev_rows) and len(data) == rows - held
    for qid, query in data.dev_queries.items():  # each dev query retrieves its own positive in the dev corpus
        (pos_id,) = data.dev_qrels[qid]
        assert query == triples[int(qid[1:])][0] and data.dev_corpus[pos_id] == triples[int(qid[1:])][1]
    epoch = [row["anchor"] for row, _ in zip(data.stream.iter_from(0), range(len(data)), strict=False)]
    assert sorted(epoch) == sorted(t[0] for i, t in enumerate(triples) if i not in dev)  # each train row once
    stream = [row["anchor"] for row, _ in zip(data.stream.iter_from(0), range(3 * len(data) + 20), strict=False)]
    for position in (1, len(data) - 1, len(data) + 5):
        resumed = [row["anchor"] for row, _ in zip(data.stream.iter_from(position), range(10), strict=False)]
        assert resumed == stream[position:position + 10]


def test_train_on_msmarco_id_triples_through_the_cli(tiny_bert_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(2)
    words = ["sun", "moon", "star", "comet", "planet", "orbit", "galaxy", "nebula", "quasar", "pulsar"]
    passages = {pid: " ".join(rng.sample(words, 6)) for pid in range(100, 140)}
    queries = {qid: " ".join(passages[100 + qid % 40].split()[:2]) for qid in range(40)}
    (tmp_path / "collection.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in passages.items()), encoding="utf-8")
    (tmp_path / "queries.train.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()), encoding="utf-8")
    (tmp_path / "triples.tsv").write_text("".join(f"{q}\t{100 + q % 40}\t{100 + (q + 7) % 40}\n" for q in queries),
                                          encoding="utf-8")
    args = ["train", "--model", str(tiny_bert_dir), "--data", str(tmp_path / "triples.tsv"), "--moe", "none",
            "--max-steps", "3", "-b", "8", "--max-length", "16", "--queries-file", str(tmp_path / "queries.train.tsv")]
    missing = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m")])
    assert missing.exit_code == 1 and "need both --collection and --queries-file" in missing.output
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m"), "--collection",
                                      str(tmp_path / "collection.tsv"), "--shuffle-buffer", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "m" / "sbmoe_train.json").read_text())
    assert summary["data"] == {"source": str(tmp_path / "triples.tsv"), "triples": 40, "dev_rows": 4}
    assert summary["config"]["shuffle_buffer"] == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 3

    (tmp_path / "triples.tsv").write_text("1\t100\t9999\n", encoding="utf-8")
    bad = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m2"), "--collection", str(tmp_path / "collection.tsv"),
                                   "--dev-fraction", "0"])
    assert bad.exit_code == 1 and "triples.tsv:1: passage id 9999 is not in" in bad.output
    assert not (tmp_path / "m2").exists()
    assert np.isfinite(summary["best_dev_ndcg10"])
