"""MoE LM testbed: parameter parity across expert pools, PSR masking, loss falls, exact resume."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sbmoe.lm import train as lm_train
from sbmoe.lm.data import LMCorpus, encode_stream, is_held_out, train_tokenizer
from sbmoe.lm.model import LMConfig, MoELM
from sbmoe.lm.train import LMTrainConfig, train_lm

SMALL = dict(vocab_size=300, seq_len=16, n_layer=4, n_head=2, d_model=32, experts_per_layer=4, expert_hidden=32,
             top_k=2)


@pytest.fixture(scope="module")
def corpus() -> LMCorpus:
    rng = random.Random(0)
    words = ["cell", "gene", "protein", "binds", "the", "a", "receptor", "in", "mice", "cancer", "drug", "dose"]
    texts = [" ".join(rng.choice(words) for _ in range(30)) + "." for _ in range(200)]
    tokenizer = train_tokenizer(texts[:180], 300)
    stream = encode_stream(tokenizer, texts[:180])
    return LMCorpus(stream, encode_stream(tokenizer, texts[180:]), {}, tokenizer.get_vocab_size())


def test_rexmoe_pools_keep_parameters_and_active_counts() -> None:
    local = MoELM(LMConfig(**SMALL)).parameter_counts()
    for pool, reuse in (("group", 2), ("group", 4), ("sliding", 3)):
        counts = MoELM(LMConfig(**SMALL, pool=pool, reuse=reuse)).parameter_counts()
        assert counts["expert"] == local["expert"]
        assert counts["active_expert_per_token"] == local["active_expert_per_token"]
        # only the routers grow: d * (r - 1) * E more gate weights and biases per layer
        assert counts["non_expert"] - local["non_expert"] == 4 * (32 + 1) * 4 * (reuse - 1)


def test_psr_hides_non_local_experts_until_its_fraction() -> None:
    model = MoELM(LMConfig(**SMALL, pool="group", reuse=2, psr_fraction=0.5, psr_schedule="linear"))
    idx = torch.randint(0, 300, (2, 16))
    model.set_progress(0.0)
    model(idx)
    assert all(s.non_local_share == 0.0 for s in model.routing_stats())
    model.set_progress(0.25)
    assert model.candidate_mask().tolist() == [True] * 6 + [False] * 2
    model.set_progress(0.5)
    assert model.candidate_mask() is None


class Killed(RuntimeError):
    pass


def test_loss_falls_and_resume_is_exact(corpus: LMCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_config = LMConfig(**SMALL, pool="group", reuse=2, psr_fraction=0.3, psr_schedule="step")
    config = LMTrainConfig(model=model_config, steps=40, batch_size=8, lr=3e-3, warmup=5, eval_every=10,
                           eval_batches=2, show_progress=False)
    clean, history = train_lm(config, corpus)
    assert history[-1]["val_ppl"] < 0.7 * history[0]["val_ppl"], history
    assert len(history[-1]["load_entropy"]) == 4 and history[-1]["distinct_combinations"][0] > 1

    original_save = lm_train.save_checkpoint

    def save_then_die(path, model, optimizer, generator, step, hist, cfg):
        original_save(path, model, optimizer, generator, step, hist, cfg)
        if step == 20:
            raise Killed  # killed right after the step-20 checkpoint

    resumable = LMTrainConfig(**{**config.__dict__, "output": tmp_path / "run"})
    monkeypatch.setattr(lm_train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_lm(resumable, corpus)
    monkeypatch.setattr(lm_train, "save_checkpoint", original_save)
    resumed, resumed_history = train_lm(resumable, corpus)
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["val_ppl"] for h in resumed_history] == [h["val_ppl"] for h in history]

    # the final evaluation reads the first N tokens of each split when told to (the CLI tests rely on it)
    from sbmoe.lm.train import evaluate_final

    short, longer = evaluate_final(clean, corpus, max_tokens=640), evaluate_final(clean, corpus, max_tokens=1280)
    assert short["val_ppl"] == clean.perplexity(corpus.validation[:641].long()) != longer["val_ppl"]
    for name, tokens in corpus.ood.items():
        assert short[f"{name}_ppl"] == clean.perplexity(tokens[:641].long())


def test_document_split_is_stable() -> None:
    assert is_held_out("4983", 0.05) == is_held_out("4983", 0.05)
    share = sum(is_held_out(str(i), 0.1) for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


def test_lm_cli_trains_resumes_and_evaluates(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sbmoe.cli import app

    args = ["lm", "train", "-o", str(tmp_path / "lm"), "--pool", "group", "--reuse", "2", "--psr", "step",
            "--steps", "4", "--eval-every", "2", "--batch-size", "2", "--seq-len", "64", "--vocab", "400",
            "--layers", "2", "--d-model", "16", "--experts", "2", "--expert-hidden", "8",
            "--final-eval-tokens", "20000"]
    runner = CliRunner()
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    assert "wikitext2-test_ppl" in trained.output and (tmp_path / "lm" / "tokenizer.json").is_file()
    again = runner.invoke(app, args)  # the checkpoint is at the last step: nothing left to train
    evaluated = runner.invoke(app, ["lm", "eval", str(tmp_path / "lm")])
    assert again.output == trained.output == evaluated.output
    bad = runner.invoke(app, [*args[:5], "sliding", "--reuse", "1"])
    assert bad.exit_code == 1 and "local pools take reuse 1" in bad.output


def test_tinyshakespeare_holds_out_the_end_of_the_text() -> None:
    from sbmoe.lm.data import data_file, tinyshakespeare_texts

    text = data_file("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    train, held_out = tinyshakespeare_texts(0.1)
    speeches = [s.strip("\n") for s in text.split("\n\n") if s.strip()]
    assert train + held_out == speeches  # every speech once, in order: training first, then held out
    assert text.index(held_out[0]) >= 0.9 * len(text) > text.rindex(train[-1])
    assert 0.08 < sum(map(len, held_out)) / len(text) < 0.11


def test_lm_cli_evaluates_a_model_on_the_corpus_it_trained_on(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sbmoe.cli import app

    args = ["lm", "train", "-o", str(tmp_path / "lm"), "--corpus", "tinyshakespeare", "--steps", "2",
            "--eval-every", "2", "--batch-size", "2", "--seq-len", "64", "--vocab", "400", "--layers", "2",
            "--d-model", "16", "--experts", "2", "--expert-hidden", "8", "--final-eval-tokens", "20000"]
    runner = CliRunner()
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["lm", "eval", str(tmp_path / "lm")])
    assert evaluated.output == trained.output  # SciFact's held-out text would give another perplexity
    bad = runner.invoke(app, [*args[:3], str(tmp_path / "other"), "--corpus", "shakespeare"])
    assert bad.exit_code == 1 and "unknown LM corpus 'shakespeare'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "other").exists()
