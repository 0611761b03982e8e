"""Query-side experts and the routed model, on a tiny random BERT and two toy BEIR folders whose domains share no
words: an expert moves query embeddings only; routing sends each domain's queries to its own expert; a routed
model reloads in a fresh process with the same rankings; adding an expert leaves the others' files unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbmoe.experts.build import build_routed_model, change_experts, routed_experts
from sbmoe.experts.config import ExpertConfig, RoutedConfig
from sbmoe.experts.trainer import batch_loss, train_expert
from sbmoe.index.retriever import Retriever
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts

WORDS = {
    "bio": ["protein", "cell", "gene", "enzyme", "tumor", "virus", "blood", "drug", "insulin", "kidney", "liver",
            "brain", "cancer", "immune", "bacteria"],
    "aero": ["engine", "wing", "flow", "pressure", "turbine", "airfoil", "velocity", "shock", "nozzle", "thrust",
             "drag", "lift", "rotor", "blade", "jet"],
}


def toy_domain(root: Path, name: str, seed: int) -> Path:
    """40 documents of 12 domain words (its marker word first), 60 training and 20 test queries of 3 words each."""
    rng = np.random.default_rng(seed)
    words = WORDS[name]
    folder = root / name
    (folder / "qrels").mkdir(parents=True)
    docs = {f"{name}-d{i}": " ".join([name, *rng.choice(words, 11)]) for i in range(40)}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                 for d, t in docs.items()))
    queries, qrels = {}, {"train": [], "test": []}
    for i in range(80):
        doc = f"{name}-d{i % 40}"
        queries[f"{name}-q{i}"] = " ".join(rng.choice(docs[doc].split()[1:], 3, replace=False))
        qrels["train" if i < 60 else "test"].append(f"{name}-q{i}\t{doc}\t1")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    return {name: toy_domain(root, name, seed) for seed, name in enumerate(WORDS)}


@pytest.fixture(scope="module")
def experts(domains: dict[str, Path], tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("experts")
    return {name: train_expert(ExpertConfig(model=str(tiny_bert_dir), data=(str(folder),), output=out / name,
                                            lr=5e-3, epochs=2, batch_size=12, dev_queries=10, seed=0, name=name,
                                            show_progress=False))
            for name, folder in domains.items()}


@pytest.fixture(scope="module")
def routed(experts: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_routed_model(RoutedConfig(experts=experts, output=tmp_path_factory.mktemp("routed") / "model",
                                           pilots_per_expert=2, routing_queries=60, gate_epochs=30))


def texts(folder: Path, split: str) -> list[str]:
    from sbmoe.data import BeirDataset

    queries, _ = BeirDataset.open(str(folder)).load_split(split)
    return list(queries.values())


def test_expert_changes_queries_only_and_trains_only_its_adapter(experts: dict, domains: dict, tiny_bert_dir: Path,
                                                                  routed: Path) -> None:
    record = json.loads((experts["bio"] / "expert.json").read_text())
    assert record["steps"] > 0 and record["loss"][-1] < record["loss"][0]  # it learned
    base = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    model = load_encoder(EncoderConfig(model=str(routed)))
    queries = texts(domains["bio"], "test")
    documents = [json.loads(line)["text"] for line in (domains["bio"] / "corpus.jsonl").read_text().splitlines()]
    base_docs = encode_texts(base, documents, task="document")
    assert np.array_equal(encode_texts(model, documents, task="document"), base_docs)  # bit-identical
    assert np.abs(encode_texts(model, queries, task="query") - encode_texts(base, queries, task="query")).max() > 1e-3
    from safetensors.torch import load_file

    weights = load_file(str(experts["bio"] / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # B starts at zero: it moved
    assert all("lora_" in k for k in weights)  # nothing of the base model is saved (or trained) with the expert


def test_pilots_route_well_separated_domains_to_the_expert_that_ranks_them_best() -> None:
    """RouterRetriever's pilots on two clusters of base embeddings, each ranked best by its own expert: every
    held-out query of a cluster goes to that cluster's expert."""
    from sbmoe.experts.build import RoutingSample, pilot_tables
    from sbmoe.experts.routed import RoutingTables

    rng = np.random.default_rng(0)
    centres = np.eye(2, 16)
    points = np.concatenate([centres[d] + 0.1 * rng.standard_normal((80, 16)) for d in (0, 1)])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    domain = np.repeat([0, 1], 80)
    scores = np.stack([np.where(domain == e, 1.0, 0.5) + 0.01 * rng.random(160) for e in (0, 1)], axis=1)
    train, test = np.r_[0:60, 80:140], np.r_[60:80, 140:160]
    sample = RoutingSample([""] * 120, domain[train], points[train], [], [], [], [])
    pilots, owners, best = pilot_tables(sample, scores[train], per_expert=3, seed=0)
    assert np.array_equal(best, domain[train]) and sorted(owners.tolist()) == [0, 0, 0, 1, 1, 1]
    empty = torch.zeros((2, 16))
    tables = RoutingTables({"pilots": torch.from_numpy(pilots), "pilot_owner": torch.from_numpy(owners),
                            "centroids": empty, "gate_weight": empty, "gate_bias": torch.zeros(2),
                            "classifier_weight": empty, "classifier_bias": torch.zeros(2)})
    chosen = tables.weights(torch.from_numpy(points[test]).float(), "pilot", 2).argmax(dim=1).numpy()
    assert np.array_equal(chosen, domain[test])


def test_routing_sends_each_domain_to_its_own_expert(routed: Path, domains: dict) -> None:
    model = load_encoder(EncoderConfig(model=str(routed)))
    module = model[0]
    for mode in ("supervised", "dataset"):
        module.mode = mode
        for name, folder in domains.items():
            encode_texts(model, texts(folder, "test"), batch_size=64, task="query")
            chosen = {module.expert_names[int(i)] for i in module.last_choice}
            assert chosen == {name}, (mode, name, chosen)


def test_routing_command_reports_query_shares_of_a_routed_model(routed: Path, domains: dict) -> None:
    from typer.testing import CliRunner

    from sbmoe.cli import app

    result = CliRunner().invoke(app, ["routing", str(routed), "--datasets", str(domains["aero"]), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "query shares" in result.output and "aero" in result.output


def test_average_is_the_mean_of_the_experts(routed: Path, domains: dict) -> None:
    model = load_encoder(EncoderConfig(model=str(routed)))
    module = model[0]
    queries = texts(domains["aero"], "test")[:5]
    features = model.preprocess(queries)
    features = {k: v for k, v in features.items()}
    module.mode = "average"
    mixed = module(dict(features), task="query")["token_embeddings"]  # with grad: each expert's low-rank pass
    with torch.no_grad():
        merged = module(dict(features), task="query")["token_embeddings"]  # without: its merged weights
    assert set(module._merged) == set(module.expert_names)
    parts = []
    for name in module.expert_names:
        module.transformer.auto_model.set_adapter(name)
        parts.append(module.transformer(dict(features))["token_embeddings"])
    torch.testing.assert_close(mixed, sum(parts) / len(parts), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged, sum(parts) / len(parts), rtol=1e-5, atol=1e-6)


def test_a_mixed_batch_gives_each_query_its_own_experts_pass(routed: Path, domains: dict) -> None:
    model = load_encoder(EncoderConfig(model=str(routed)))
    module = model[0]
    module.mode = "supervised"
    queries = [q for pair in zip(texts(domains["aero"], "test")[:4], texts(domains["bio"], "test")[:4],
                                 strict=True) for q in pair]  # the two domains interleaved in one batch
    features = dict(model.preprocess(queries))
    with torch.no_grad():
        mixed = module(dict(features), task="query")["token_embeddings"]
        base = module(dict(features), task="document")["token_embeddings"]
        choice = module.last_choice.tolist()
        assert len(set(choice)) == 2  # both experts in the batch: the rows must not share one pass
        auto = module.transformer.auto_model
        own = {}
        for name in module.expert_names:  # the reference: each expert switched on alone, the whole batch
            auto.set_adapter(name)
            own[name] = module.transformer(dict(features))["token_embeddings"]
        auto.disable_adapters()
        plain = module.transformer(dict(features))["token_embeddings"]
        auto.enable_adapters()
    expected = torch.stack([own[module.expert_names[c]][i] for i, c in enumerate(choice)])
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(base, plain, rtol=0, atol=0)


def test_a_batch_for_one_expert_runs_through_its_merged_weights_and_leaves_the_base_intact(routed: Path,
                                                                                           domains: dict) -> None:
    from sbmoe.experts.adapters import base_weights

    model = load_encoder(EncoderConfig(model=str(routed)))
    module = model[0]
    module.mode = "supervised"
    auto = module.transformer.auto_model
    for domain in ("aero", "bio"):
        features = dict(model.preprocess(texts(domains[domain], "test")[:1]))  # a served query: one at a time
        with torch.no_grad():
            routed_tokens = module(dict(features), task="query")["token_embeddings"]
            name = module.expert_names[int(module.last_choice[0])]
            assert name in module._merged  # the merged path ran
            auto.set_adapter(name)  # the reference: the LoRA layers' own low-rank pass
            expected = module.transformer(dict(features))["token_embeddings"]
            auto.disable_adapters()
            plain = module.transformer(dict(features))["token_embeddings"]
            auto.enable_adapters()
            after = module(dict(features), task="document")["token_embeddings"]
        torch.testing.assert_close(routed_tokens, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(routed_tokens, plain, atol=1e-4)  # the expert moved it
        torch.testing.assert_close(after, plain, rtol=0, atol=0)  # the base weights are back, bit for bit
    assert set(module._merged) == set(module.expert_names)
    original = [layer.base_layer.weight for layer in module._lora]
    with pytest.raises(RuntimeError), base_weights(module._lora, module._merged[module.expert_names[0]]):
        raise RuntimeError("a pass that fails half-way")
    assert all(a is b for a, b in zip(original, (layer.base_layer.weight for layer in module._lora), strict=True))
    model.train()
    assert not module._merged  # weights that may change are merged again when next used


def test_routed_model_reloads_in_a_fresh_process_with_the_same_rankings(routed: Path, domains: dict,
                                                                        tmp_path: Path) -> None:
    from sbmoe.index.builder import IndexConfig, build_index

    base_index = tmp_path / "idx"
    build_index(IndexConfig(str(domains["bio"]), base_index,
                            EncoderConfig(model=json.loads((routed / "0_RoutedTransformer" / "routing.json")
                                                           .read_text())["base_model"]),
                            use_cache=False, show_progress=False))
    queries = texts(domains["bio"], "test")
    here = Retriever.from_index(base_index, EncoderConfig(model=str(routed))).search(queries, k=5)  # base index
    script = ("import json, sys; from sbmoe.index.retriever import Retriever; from sbmoe.models.encoder import "
              "EncoderConfig; q = json.loads(sys.argv[3]); "
              "r = Retriever.from_index(sys.argv[1], EncoderConfig(model=sys.argv[2])).search(q, k=5); "
              "print(json.dumps({k: list(v) for k, v in r.items()}))")
    result = subprocess.run([sys.executable, "-c", script, str(base_index), str(routed), json.dumps(queries)],
                            capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {k: list(v) for k, v in here.items()}


def test_adding_an_expert_leaves_the_others_unchanged(routed: Path, experts: dict, tmp_path: Path) -> None:
    before = {name: (folder / "adapter_model.safetensors").read_bytes()
              for name, folder in routed_experts(routed).items()}
    grown = change_experts(routed, tmp_path / "grown", add={"bio2": experts["bio"]},
                           config=RoutedConfig(pilots_per_expert=2, routing_queries=30, gate_epochs=5))
    after = routed_experts(grown)
    assert list(after) == ["bio", "aero", "bio2"]
    for name, data in before.items():
        assert (after[name] / "adapter_model.safetensors").read_bytes() == data
    shrunk = change_experts(grown, tmp_path / "shrunk", remove=("bio2",),
                            config=RoutedConfig(pilots_per_expert=2, routing_queries=30, gate_epochs=5))
    assert list(routed_experts(shrunk)) == ["bio", "aero"]


def test_loss_masks_a_shared_positive_and_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    queries = torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float64)
    documents = torch.tensor(rng.standard_normal((5, 4)), dtype=torch.float64)
    positives, negatives = np.array([0, 1, 0]), np.array([3, -1, 4])
    loss = batch_loss(queries, documents, positives, negatives, 0.5)
    columns = [0, 1, 0, 3, 4]
    expected = 0.0
    for i in range(3):
        scores = [float(queries[i] @ documents[c]) / 0.5 for j, c in enumerate(columns)
                  if not (c == positives[i] and j != i)]  # query 0's positive also sits in column 2: masked
        target = float(queries[i] @ documents[positives[i]]) / 0.5
        expected += -(target - np.log(np.sum(np.exp(scores))))
    assert float(loss) == pytest.approx(expected / 3, rel=1e-9)


def test_bad_inputs_are_one_line(routed: Path, experts: dict, domains: dict, tmp_path: Path) -> None:
    from cli_errors import fails_with_one_line

    other = tmp_path / "other"
    record = json.loads((experts["aero"] / "expert.json").read_text())
    other.mkdir()
    for path in experts["aero"].iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    (other / "expert.json").write_text(json.dumps({**record, "base_fingerprint": "0" * 64}))
    line = fails_with_one_line("expert", "route", f"bio={experts['bio']}", f"aero={other}", "-o", tmp_path / "r")
    assert "trained on another base model" in line
    assert "unknown routing mode 'nearest'" in fails_with_one_line("expert", "route", f"bio={experts['bio']}", "-o",
                                                                   tmp_path / "r2", "--mode", "nearest")
    with pytest.raises(ValueError, match="no expert named 'chem'"):
        change_experts(routed, tmp_path / "r3", remove=("chem",))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in routed.rglob("*"):
        if path.is_file() and path.name != "routing.safetensors":
            target = damaged / path.relative_to(routed)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    assert "missing its pilots" in fails_with_one_line("eval", "--model", damaged, "--datasets", domains["bio"],
                                                       "--output-dir", tmp_path / "out")


def test_an_expert_stopped_mid_epoch_resumes_to_the_same_weights(domains: dict, tiny_bert_dir: Path,
                                                                  tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sbmoe.experts.trainer import ExpertIncomplete

    def config(out: Path, **extra) -> ExpertConfig:
        return ExpertConfig(model=str(tiny_bert_dir), data=(str(domains["aero"]),), output=out, lr=5e-3, epochs=1,
                            batch_size=8, dev_queries=10, save_steps=2, show_progress=False, **extra)

    whole = train_expert(config(tmp_path / "whole"))
    with pytest.raises(ExpertIncomplete, match="rerun to resume"):
        train_expert(config(tmp_path / "cut", max_minutes=1e-9))
    assert (tmp_path / "cut-checkpoints" / "resume" / "state.json").is_file() and not (tmp_path / "cut").exists()
    cut = train_expert(config(tmp_path / "cut"))
    first, second = (load_file(str(p / "adapter_model.safetensors")) for p in (whole, cut))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
