"""Training through sentence-transformers' trainer: loss falls, kill-and-resume is exact, head-only works."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from sbmoe.data import DataFormatError, read_triples
from sbmoe.training import callbacks as training
from sbmoe.training.config import TrainConfig
from sbmoe.training.train_log import dev_curve, resumed_from_step
from sbmoe.training.trainer import train

WORDS = [
    "protein", "cell", "gene", "virus", "cancer", "brain", "heart", "lung", "liver", "blood",
    "bone", "skin", "drug", "dose", "trial", "mouse", "enzyme", "receptor", "insulin", "glucose",
    "immune", "tumor", "neuron", "muscle", "kidney", "vaccine", "antibody", "plasma",
]


@pytest.fixture(scope="module")
def triples_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic retrieval: each query is three words of its document; the negative is another document."""
    rng = random.Random(0)
    docs = [" ".join(rng.sample(WORDS, 8)) for _ in range(48)]
    lines = []
    for i, doc in enumerate(docs):
        query = " ".join(doc.split()[:3])
        lines.append(f"{query}\t{doc}\t{docs[(i + 1) % len(docs)]}")
    path = tmp_path_factory.mktemp("triples") / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_for(tiny_bert_dir: Path, triples: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(model=str(tiny_bert_dir), output=out, data=str(triples), moe="top1", experts=4, lr=2e-3,
                batch_size=8, epochs=1, max_length=32, temperature=0.1, seed=0, dev_fraction=0.125,
                show_progress=False, aux_loss_weight=0.01)
    base.update(overrides)
    return TrainConfig(**base)


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_loss_falls_and_log_has_dev_ndcg_and_usage_entropy(tiny_bert_dir: Path, triples_file: Path,
                                                           tmp_path: Path) -> None:
    out = train(config_for(tiny_bert_dir, triples_file, tmp_path / "m", epochs=6, eval_steps=5))
    records = log_records(out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    assert any("eval_dev_dot_ndcg@10" in r for r in records)
    entropies = [r["expert_usage_entropy"][0] for r in records if "expert_usage_entropy" in r]
    assert entropies and all(0.0 <= e <= torch.log(torch.tensor(4.0)) + 1e-6 for e in entropies)
    loaded = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "SBMoEHead"]
    summary = json.loads((out / "sbmoe_train.json").read_text())
    assert summary["best_dev_ndcg10"] is not None


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("settings", [
    dict(epochs=2, eval_steps=3),
    # the recipe experiment's cells: a checkpoint every epoch, bf16 encoder passes, constant lr
    dict(epochs=2, precision="bf16", scheduler="constant", weight_decay=0.01, max_grad_norm=0.0),
], ids=["every-3-steps", "per-epoch-bf16"])
def test_kill_and_resume_gives_the_same_weights_and_log(tiny_bert_dir: Path, triples_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, settings: dict) -> None:
    clean = train(config_for(tiny_bert_dir, triples_file, tmp_path / "clean", **settings))
    evaluated = [r["step"] for r in log_records(clean) if "eval_dev_dot_ndcg@10" in r]
    first_save, second_save = evaluated[:2]  # a checkpoint is saved at each evaluation
    assert first_save == settings.get("eval_steps", first_save), evaluated

    original_on_save = training.TrainLogCallback.on_save

    def die_while_saving_the_second_checkpoint(self, args, state, control, **kwargs):
        if state.global_step == second_save:  # kill -9 mid-save: the trainer state is written last
            (Path(args.output_dir) / f"checkpoint-{second_save}" / "trainer_state.json").unlink()
            raise Killed(f"killed while saving step {state.global_step}")

    monkeypatch.setattr(training.TrainLogCallback, "on_save", die_while_saving_the_second_checkpoint, raising=False)
    config = config_for(tiny_bert_dir, triples_file, tmp_path / "resumed", **settings)
    with pytest.raises(Killed, match=f"step {second_save}$"):
        train(config)
    assert not config.output.exists() and (config.checkpoint_dir / f"checkpoint-{second_save}").is_dir()
    monkeypatch.setattr(training.TrainLogCallback, "on_save", original_on_save, raising=False)
    resumed = train(config)

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        tensors = load_file(str(folder / "model.safetensors"))
        tensors.update({f"head.{k}": v for k, v in load_file(str(next(folder.glob("*SBMoEHead*")) /
                                                                   "model.safetensors")).items()})
        return tensors

    clean_w, resumed_w = weights(clean), weights(resumed)
    assert clean_w.keys() == resumed_w.keys()
    for name in clean_w:
        assert torch.equal(clean_w[name], resumed_w[name]), name
    # the log went on from the first checkpoint, replaying the second evaluation: read back, it is the clean run's
    replayed = [r["step"] for r in log_records(resumed) if "eval_dev_dot_ndcg@10" in r]
    assert replayed.count(second_save) == 2, replayed
    assert resumed_from_step(resumed / "train_log.jsonl") == first_save
    assert resumed_from_step(clean / "train_log.jsonl") is None
    clean_curve = dev_curve(clean / "train_log.jsonl")
    assert [c["step"] for c in clean_curve] == evaluated
    # a triples file is streamed: epochs are rows read over rows (42 training triples, 8 a step, 2 epochs)
    assert 2 - 8 / 42 <= clean_curve[-1]["epoch"] <= 2, clean_curve
    assert dev_curve(resumed / "train_log.jsonl") == clean_curve


def test_head_only_training_keeps_the_encoder_and_saves_a_full_model(tiny_bert_dir: Path, triples_file: Path,
                                                                      tmp_path: Path) -> None:
    out = train(config_for(tiny_bert_dir, triples_file, tmp_path / "h", freeze_encoder=True, moe="all",
                           epochs=2))
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "SBMoEHead"]
    base = load_file(str(tiny_bert_dir / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    for name, tensor in base.items():  # the encoder is bit-for-bit the base model
        assert torch.equal(trained[name], tensor), name
    assert model.similarity_fn_name == "dot"  # trained on raw dot products, it declares them


def test_trained_model_declares_cosine_and_trains_under_its_prompts(tiny_bert_dir: Path, triples_file: Path,
                                                                     tmp_path: Path) -> None:
    """Head-only training looks texts up by prompt + text, as the trainer's collator hands them over: it runs only if
    each side is given its declared prompt. Trained with normalisation, the saved model declares cosine."""
    from sbmoe.models.encoder import EncoderConfig, load_encoder

    prompted = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    prompted.prompts.update({"query": "query: ", "document": "passage: "})
    prompted.save(str(tmp_path / "prompted"))
    out = train(config_for(tmp_path / "prompted", triples_file, tmp_path / "h", freeze_encoder=True, moe="all",
                           epochs=1, normalize=True))
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert model.similarity_fn_name == "cosine" and model.prompts["query"] == "query: "


def test_training_input_errors(tiny_bert_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\tpos\tneg\nonly two\tfields\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="bad.tsv:2: expected query<TAB>positive<TAB>negative"):
        read_triples(bad)
    with pytest.raises(ValueError, match="--freeze-encoder trains only the SB-MoE head"):
        train(config_for(tiny_bert_dir, bad, tmp_path / "x", moe="none", freeze_encoder=True))


def test_separate_heads_route_queries_and_documents(tiny_bert_dir: Path, triples_file: Path, tmp_path: Path) -> None:
    import numpy as np

    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_texts

    out = train(config_for(tiny_bert_dir, triples_file, tmp_path / "sep", separate_heads=True, epochs=1))
    model = load_encoder(EncoderConfig(model=str(out)))
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Router"]
    texts = ["protein cell gene", "a longer document about the liver and insulin"]
    queries, docs = encode_texts(model, texts, task="query"), encode_texts(model, texts, task="document")
    np.testing.assert_allclose(queries, model.encode_query(texts), atol=1e-5)
    np.testing.assert_allclose(docs, model.encode_document(texts), atol=1e-5)
    assert np.abs(queries - docs).max() > 1e-3  # two different heads


def router_weights(folder: Path) -> dict[str, torch.Tensor]:
    head_dir = next(p for p in folder.iterdir() if p.is_dir() and "SBMoEHead" in p.name)
    return {k: v for k, v in load_file(str(head_dir / "model.safetensors")).items() if k.startswith("router.")}


def initial_router(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The router the trainer starts from: same seed, same head constructor."""
    from transformers import set_seed

    from sbmoe.training.trainer import make_heads

    set_seed(config.seed)
    return {f"router.{k}": v for k, v in make_heads(config, 32).router.state_dict().items()}


@pytest.mark.parametrize("gate", ["scaled", "straight_through"])
def test_trainable_gate_moves_its_router_and_frozen_router_does_not(tiny_bert_dir: Path, triples_file: Path,
                                                                    tmp_path: Path, gate: str) -> None:
    trained = config_for(tiny_bert_dir, triples_file, tmp_path / "t", gate=gate, epochs=2, aux_loss_weight=None)
    frozen = config_for(tiny_bert_dir, triples_file, tmp_path / "f", gate=gate, epochs=2, freeze_router=True,
                        aux_loss_weight=None)
    assert trained.resolved_aux_loss_weight() > 0 and frozen.resolved_aux_loss_weight() == 0
    moved, kept = router_weights(train(trained)), router_weights(train(frozen))
    init = initial_router(trained)
    assert set(moved) == set(init) == set(kept)
    assert all(torch.equal(kept[k], init[k]) for k in init)
    assert any(not torch.allclose(moved[k], init[k]) for k in init if k.startswith("router.gate"))
