"""The paper's recipe: the preset, split learning rates, pairs (in-batch negatives only), the query-side head."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from sbmoe.data import DataFormatError, read_triples
from sbmoe.training.config import RECIPES, TrainConfig
from sbmoe.training.trainer import train

WORDS = ["protein", "cell", "gene", "virus", "cancer", "brain", "heart", "lung", "liver", "blood", "bone", "skin",
         "drug", "dose", "trial", "mouse", "enzyme", "receptor", "insulin", "glucose", "immune", "tumor"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two columns: each query is three words of its document; no negatives."""
    rng = random.Random(1)
    docs = [" ".join(rng.sample(WORDS, 8)) for _ in range(40)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("".join(f"{' '.join(d.split()[:3])}\t{d}\n" for d in docs), encoding="utf-8")
    return path


def tiny(tiny_bert_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    """The paper's recipe on the tiny model and data, shrunk where it must be to run in seconds."""
    settings = dict(model=str(tiny_bert_dir), output=out, data=str(data), batch_size=8, max_length=32,
                    experts=4, seed=0, dev_fraction=0.1, show_progress=False)
    settings.update(overrides)
    return TrainConfig.from_recipe("paper", **settings)


def test_paper_recipe_sets_every_item_and_explicit_options_win() -> None:
    paper = TrainConfig.from_recipe("paper")
    assert (paper.lr, paper.encoder_lr, paper.resolved_encoder_lr()) == (1e-4, 1e-6, 1e-6)
    assert (paper.weight_decay, paper.scheduler, paper.max_grad_norm) == (0.01, "constant", 0.0)
    assert (paper.batch_size, paper.epochs, paper.negatives, paper.temperature) == (64, 30.0, "none", 1.0)
    assert (paper.normalize, paper.max_length, paper.experts, paper.gate) == (False, 512, 6, "paper")
    assert (paper.resolved_aux_loss_weight(), paper.keep, paper.separate_heads) == (0.0, "last", False)
    assert paper.recipe == "paper"
    mine = TrainConfig.from_recipe("paper", lr=2e-4, epochs=3.0)
    assert (mine.lr, mine.epochs, mine.encoder_lr) == (2e-4, 3.0, 1e-6)
    default = TrainConfig.from_recipe(None)
    assert default == TrainConfig() and default.resolved_encoder_lr() == default.lr  # today's behaviour
    with pytest.raises(ValueError, match="unknown --recipe 'nope'; choose one of paper"):
        TrainConfig.from_recipe("nope")
    assert set(RECIPES["paper"]) <= {f for f in TrainConfig.__dataclass_fields__}


def test_encoder_group_gets_lr_over_100(tiny_bert_dir: Path, pairs_file: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer's groups: every encoder parameter at 1e-6, every head parameter at 1e-4; and one step
    moves the head's weights far more than the encoder's."""
    from sentence_transformers.base.trainer import BaseTrainer

    groups: list[dict] = []
    names: dict[int, str] = {}
    original = BaseTrainer.create_optimizer

    def spy(self, *args, **kwargs):
        optimizer = original(self, *args, **kwargs)
        names.update({id(p): n for n, p in self.model.named_parameters()})
        groups.extend(optimizer.param_groups)
        return optimizer

    monkeypatch.setattr(BaseTrainer, "create_optimizer", spy)
    config = tiny(tiny_bert_dir, pairs_file, tmp_path / "m", max_steps=1)
    out = train(config)
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    encoder = {n: lr for n, lr in lr_of.items() if n.startswith("0.")}
    head = {n: lr for n, lr in lr_of.items() if not n.startswith("0.")}
    assert encoder and head and len(lr_of) == sum(p.requires_grad for _, p in SentenceTransformer(
        str(out), trust_remote_code=True).named_parameters())
    assert set(encoder.values()) == {1e-6} and set(head.values()) == {1e-4}
    assert all(g["weight_decay"] in (0.0, 0.01) for g in groups)

    base = load_file(str(tiny_bert_dir / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    encoder_move = max(float((trained[k] - v).abs().max()) for k, v in base.items())
    head_dir = next(p for p in out.iterdir() if p.is_dir() and "SBMoEHead" in p.name)
    from transformers import set_seed

    from sbmoe.training.trainer import make_heads

    set_seed(config.seed)
    init = make_heads(config, 32).state_dict()
    head_now = load_file(str(head_dir / "model.safetensors"))
    head_move = max(float((head_now[k] - v).abs().max()) for k, v in init.items() if k.startswith("experts"))
    assert 0 < encoder_move < 2e-6 and head_move > 50 * encoder_move
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["recipe"] == "paper" and log[0]["config"]["encoder_lr"] == 1e-6


def test_pairs_train_on_in_batch_negatives(tiny_bert_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    config = tiny(tiny_bert_dir, pairs_file, tmp_path / "p", epochs=6, lr=3e-3, encoder_lr=3e-3, eval_steps=4,
                  moe="none")
    out = train(config)
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < 0.8 * losses[0], losses
    assert json.loads((out / "sbmoe_train.json").read_text())["config"]["keep"] == "last"


def test_pairs_file_errors(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("q\tpos\nq2\tpos2\tneg2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"mixed.tsv:2: expected query<TAB>positive \(like the first row\)"):
        read_triples(mixed)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive": "p2", "negative": "n"}\n')
    with pytest.raises(DataFormatError, match="pairs.jsonl:2: expected JSON with query and positive, no negative"):
        read_triples(jsonl)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"query": "q", "positive": "p"}\n', encoding="utf-8")
    assert read_triples(ok) == [("q", "p")]


def test_beir_pairs_without_mining_encode_nothing(tiny_encoder, scifact_slice: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from sbmoe.data import BeirDataset
    from sbmoe.training import pairs

    def no_mining(*args, **kwargs):
        raise AssertionError("in-batch-only training must not mine negatives")

    monkeypatch.setattr(pairs.Retriever, "from_dataset", no_mining)
    data = pairs.beir_data(BeirDataset.open(scifact_slice), "test", tiny_encoder,
                           TrainConfig(negatives="none", dev_fraction=0.2, dev_distractors=5))
    assert data.anchors and len(data.anchors) == len(data.positives) and data.negatives == []
    assert set(data.columns()) == {"anchor", "positive"} and data.info["negatives"] == "none"


def test_dev_split_is_the_dev_set_for_every_seed(tiny_encoder, scifact_slice: Path, tmp_path: Path) -> None:
    """--dev-split: the dev queries are exactly that split's, whatever the seed; none of them is trained on."""
    import shutil

    from sbmoe.data import BeirDataset
    from sbmoe.training import pairs

    folder = tmp_path / "split"
    shutil.copytree(scifact_slice, folder)
    header, *rows = (folder / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    qids = sorted({row.split("\t")[0] for row in rows})
    dev = set(qids[: max(1, len(qids) // 3)])
    for name, keep in (("train", lambda q: q not in dev), ("dev", lambda q: q in dev)):
        kept = [row for row in rows if keep(row.split("\t")[0])]
        (folder / "qrels" / f"{name}.tsv").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    dataset = BeirDataset.open(folder)
    queries = dataset.load_queries()
    for seed in (0, 1):
        data = pairs.beir_data(dataset, "train", tiny_encoder,
                               TrainConfig(negatives="none", dev_split="dev", dev_distractors=5, seed=seed))
        assert set(data.dev_queries) == dev
        assert not {queries[q] for q in dev} & set(data.anchors)
        assert set(data.anchors) == {queries[q] for q in qids if q not in dev}
    with pytest.raises(ValueError, match="--dev-split names a split of a BEIR dataset"):
        TrainConfig(data=str(folder / "qrels" / "dev.tsv"), dev_split="dev").validate()


def test_query_side_head_leaves_documents_as_the_base_model(tiny_bert_dir: Path, pairs_file: Path,
                                                            tmp_path: Path) -> None:
    from sbmoe.models.encoder import EncoderConfig, load_encoder

    out = train(tiny(tiny_bert_dir, pairs_file, tmp_path / "q", head_side="query", gate="scaled", max_steps=3,
                     lr=1e-2))
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Router"]
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    texts = ["protein cell gene", "a longer document about the liver and insulin"]
    base_docs = base.encode(texts)
    docs, queries = model.encode_document(texts), model.encode_query(texts)
    np.testing.assert_allclose(docs, base_docs, atol=1e-3)  # the encoder moved at lr/100 only
    assert np.abs(queries - docs).max() > 1e-3  # queries pass through the head
    with pytest.raises(ValueError, match="--head-side query puts one SB-MoE head"):
        TrainConfig(head_side="query", moe="none").validate()


def test_dev_evaluations_fall_at_each_epoch_end(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """36 training queries at batch 8 (a BEIR folder, not a stream): an epoch is 5 steps, one more than
    36 // 8, and the dev set is evaluated at steps 5 and 10, so the last dev figure is the final model's."""
    rng = random.Random(2)
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [" ".join(rng.sample(WORDS, 8)) for _ in range(40)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": d}) + "\n"
                                                 for i, d in enumerate(docs)), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(d.split()[:3])})
                                                  + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(40)), encoding="utf-8")
    out = train(tiny(tiny_bert_dir, folder, tmp_path / "m", dev_distractors=5, epochs=2))
    assert json.loads((out / "sbmoe_train.json").read_text(encoding="utf-8"))["data"]["train_queries"] == 36
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    evaluations = [(r["step"], r["epoch"]) for r in records if "eval_dev_dot_ndcg@10" in r]
    assert evaluations == [(5, 1.0), (10, 2.0)]
    assert max(r["step"] for r in records) == 10
