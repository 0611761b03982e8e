"""Domain experts with retrieval routing (RouterRetriever) against one multi-task expert and the base encoder.

A resumable grid of cells, each at most ~45 minutes on the 2-core CPU, results in eval/results/domain_experts/:

    <base>__docs                     base corpus embeddings of every test set (embedding cache) and the base arm
    <base>__lr                       the LoRA lr, picked once per base on MedQuAD dev (3,000 training queries)
    <base>__s<seed>__<expert>        one LoRA expert: scifact, medquad, squad, or multitask (their union)
    <base>__s<seed>__eval            the routed model and every arm on the seven test sets
    <base>__s<seed>__sbmoe           today's best SB-MoE head (scaled gate) trained on the union, both sides

Experts, routed models and embeddings live under eval/runs/domain_experts and eval/cache (not committed). A cell
is skipped when its JSON exists; ``--budget-min`` stops before a cell that the plan says would not finish.

    python eval/domain_experts.py --bases minilm-l3,minilm --seeds 0,1,2 --budget-min 150
    python eval/domain_experts.py --summarize
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "domain_experts"
RUNS = HERE / "runs" / "domain_experts"
os.environ.setdefault("SBMOE_CACHE", str(HERE / "cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOMAINS = ("scifact", "medquad", "squad")
ZERO_SHOT = ("arguana", "cranfield", "cacm", "msmarco-dl19-mini")
EPOCHS = {"scifact": 10, "medquad": 2, "squad": 1, "multitask": 1}  # caps; the best dev epoch is kept
MAX_QUERIES = 20_000  # training queries per dataset (SQuAD has 87,599): the grid fits the 10-hour CPU budget
LRS = (1e-4, 3e-4, 1e-3)
SLICE_MINUTES = 40.0  # an expert trains at most this long per run (a cell of <= 45 min); the next run resumes
TEST_QUERIES = 2000  # seeded sample of a test split's queries (SQuAD has 10,570): per-query tables stay small
MODES = ("pilot", "gate", "supervised", "dataset", "average")
METRICS = ("nDCG@10", "R@100")


def machine() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from sbmoe.evaluation.provenance import package_versions

    packages = package_versions(("torch", "transformers", "sentence-transformers", "peft", "faiss-cpu", "numpy",
                                 "ir-measures"))
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))), "packages": packages}


def cell_file(name: str) -> Path:
    return OUT / "cells" / f"{name}.json"


def write_cell(name: str, record: dict) -> None:
    from sbmoe.atomic import atomic_file

    text = json.dumps(record, indent=1)
    text = re.sub(r"\[[-\d\s.,eE+]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # lists on one line
    with atomic_file(cell_file(name), "w") as handle:
        handle.write(text + "\n")


def test_queries(name: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """A test split's judged queries, a seeded sample of ``TEST_QUERIES`` where it has more; ids saved once."""

    from sbmoe.atomic import write_json
    from sbmoe.data import BeirDataset

    queries, qrels = BeirDataset.open(name).load_split("test")
    qids = sorted(q for q in qrels if q in queries)
    if len(qids) > TEST_QUERIES:
        qids = sorted(qids[i] for i in np.random.default_rng(0).permutation(len(qids))[:TEST_QUERIES])
    path = OUT / "qids" / f"{name}.json"
    if not path.exists():
        write_json(path, qids)
    return {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


class TestSets:
    """Base document embeddings of every test set (cache) as exact indexes, and scoring of query embeddings."""

    def __init__(self, base, names: tuple[str, ...]) -> None:
        from sbmoe.data import BeirDataset
        from sbmoe.index.faiss_index import DenseIndex, index_meta_for
        from sbmoe.models.embedding_cache import CorpusEmbeddingCache
        from sbmoe.models.encoding import encode_corpus

        self.sets = {}
        self.vectors = {}  # raw base document embeddings, by set
        for name in names:
            dataset = BeirDataset.open(name)
            doc_ids, vectors = encode_corpus(base, dataset, 64, cache=CorpusEmbeddingCache(), show_progress=False)
            queries, qrels = test_queries(name)
            index = DenseIndex.from_embeddings(vectors, doc_ids, index_meta_for(base, "base"))
            self.sets[name] = (dataset, queries, qrels, index)
            self.vectors[name] = vectors

    def score(self, name: str, vectors, index=None) -> dict:
        """Per-query nDCG@10 (list in qid order) and the means of METRICS; ``index``: documents other than the
        base's embeddings (a two-sided head's)."""
        from sbmoe.evaluation.metrics import per_query_table

        dataset, queries, qrels, own = self.sets[name]
        index = index or own
        qids = list(queries)
        run = index.run(qids, vectors, 100, drop_self_hits=dataset.drop_self_hits)
        table = per_query_table(qrels, run, list(METRICS))
        means = {m: round(sum(table[m].get(q, 0.0) for q in qids) / len(qids), 5) for m in METRICS}
        return {**means, "per_query": [round(table["nDCG@10"].get(q, 0.0), 4) for q in qids]}


def load_base(base: str):
    from sbmoe.models.encoder import EncoderConfig, load_encoder

    return load_encoder(EncoderConfig(model=base, batch_size=64, backend="torch"))


def docs_cell(base: str) -> dict:
    """Encode every corpus with the base (into the cache) and score the base model."""
    from sbmoe.experts.data import base_query_vectors
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache

    model = load_base(base)
    started = time.perf_counter()
    sets = TestSets(model, DOMAINS + ZERO_SHOT)
    encoded = time.perf_counter() - started
    results = {name: sets.score(name, base_query_vectors(model, sets.sets[name][1], 64, CorpusEmbeddingCache()))
               for name in sets.sets}
    return {"base": base, "similarity": str(model.similarity_fn_name), "encode_minutes": round(encoded / 60, 2),
            "results": {"base": results}}


def lr_cell(base: str) -> dict:
    """One MedQuAD expert per lr on 3,000 training queries, one epoch: the lr with the best dev nDCG@10."""
    from sbmoe.experts.config import ExpertConfig
    from sbmoe.experts.trainer import train_expert

    dev = {}
    for lr in LRS:
        folder = RUNS / base / f"lr-{lr:g}"
        if not folder.exists():
            train_expert(ExpertConfig(model=base, data=("medquad",), output=folder, lr=lr, epochs=1,
                                      max_queries=3000, seed=0, show_progress=False))
        dev[f"{lr:g}"] = json.loads((folder / "expert.json").read_text())["dev_ndcg10"]
    best = max(dev, key=lambda k: dev[k][-1])
    return {"base": base, "dev_ndcg10_by_lr": dev, "lr": float(best)}


def chosen_lr(base: str) -> float:
    return float(json.loads(cell_file(f"{base}__lr").read_text())["lr"])


def expert_cell(base: str, seed: int, expert: str) -> dict | None:
    """One expert; None when it stopped at a checkpoint after ``SLICE_MINUTES`` (the next run resumes it)."""
    from sbmoe.experts.config import ExpertConfig
    from sbmoe.experts.trainer import ExpertIncomplete, train_expert

    data = DOMAINS if expert == "multitask" else (expert,)
    folder = RUNS / base / f"s{seed}" / expert
    started = time.perf_counter()
    if not folder.exists():
        try:
            train_expert(ExpertConfig(model=base, data=data, output=folder, lr=chosen_lr(base),
                                      epochs=EPOCHS[expert], seed=seed, name=expert, max_minutes=SLICE_MINUTES,
                                      max_queries=MAX_QUERIES,
                                      show_progress=sys.stderr.isatty()))
        except ExpertIncomplete as stopped:
            print(f"{stopped}", flush=True)
            return None
    record = json.loads((folder / "expert.json").read_text())
    return {"base": base, "seed": seed, "expert": expert, "minutes": round((time.perf_counter() - started) / 60, 2),
            **{k: record[k] for k in ("pairs", "steps", "train_seconds", "dev_ndcg10", "loss", "best_epoch",
                                      "temperature", "similarity")}}


def expert_vectors(model, folder: Path, name: str, sets: TestSets):
    from sbmoe.experts.adapters import load_lora
    from sbmoe.models.encoding import encode_texts

    auto = model[0].auto_model
    load_lora(auto, name, folder)
    auto.set_adapter(name)
    out = {s: encode_texts(model, list(sets.sets[s][1].values()), 64, task="query") for s in sets.sets}
    auto.delete_adapter(name)
    return out


def eval_cell(base: str, seed: int) -> dict | None:
    """Build the routed model over the three domain experts; score every arm on every test set."""
    import torch.nn.functional as F

    from sbmoe.experts.build import build_routed_model
    from sbmoe.experts.config import RoutedConfig
    from sbmoe.experts.data import base_query_vectors
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_texts

    runs = RUNS / base / f"s{seed}"
    missing = [e for e in (*DOMAINS, "multitask") if not (runs / e / "expert.json").is_file()]
    if missing:
        print(f"{base} s{seed}: eval waits for experts {', '.join(missing)}", flush=True)
        return None
    routed_dir = runs / "routed"
    started = time.perf_counter()
    if not routed_dir.exists():
        build_routed_model(RoutedConfig(experts={d: runs / d for d in DOMAINS}, output=routed_dir, seed=seed))
    built = time.perf_counter() - started
    model = load_base(base)
    sets = TestSets(model, DOMAINS + ZERO_SHOT)
    base_vectors = {s: base_query_vectors(model, sets.sets[s][1], 64, CorpusEmbeddingCache()) for s in sets.sets}
    results: dict[str, dict] = {"base": {s: sets.score(s, v) for s, v in base_vectors.items()}}
    for expert in (*DOMAINS, "multitask"):
        vectors = expert_vectors(model, runs / expert, expert, sets)
        results[f"expert:{expert}"] = {s: sets.score(s, v) for s, v in vectors.items()}
    for domain in DOMAINS:  # oracle: each in-domain set with its own expert
        results.setdefault("oracle", {})[domain] = results[f"expert:{domain}"][domain]
    for s in sets.sets:  # the ceiling of any router over the domain experts
        per_expert = np.array([results[f"expert:{d}"][s]["per_query"] for d in DOMAINS])
        best = per_expert.max(axis=0)
        results.setdefault("best-per-query", {})[s] = {"nDCG@10": round(float(best.mean()), 5),
                                                        "per_query": [round(float(v), 4) for v in best]}
    routed = load_encoder(EncoderConfig(model=str(routed_dir), batch_size=64, backend="torch"))
    module = routed[0]
    usage: dict[str, dict] = {}
    for mode in MODES:
        module.mode = mode
        results[f"routed:{mode}"] = {}
        for s in sets.sets:
            weights = module.tables.weights(F.normalize(torch_of(base_vectors[s]), dim=-1), mode, len(DOMAINS))
            usage.setdefault(mode, {})[s] = [round(float(v), 4) for v in weights.mean(dim=0)]
            if mode == "dataset":  # one decision for the whole test set: that expert's own embeddings
                results[f"routed:{mode}"][s] = results[f"expert:{DOMAINS[int(weights[0].argmax())]}"][s]
                continue
            vectors = encode_texts(routed, list(sets.sets[s][1].values()), 64, task="query")
            results[f"routed:{mode}"][s] = sets.score(s, vectors)
    accuracy = {mode: {d: usage[mode][d][i] for i, d in enumerate(DOMAINS)} for mode in usage}
    return {"base": base, "seed": seed, "build_minutes": round(built / 60, 2),
            "minutes": round((time.perf_counter() - started) / 60, 2), "routing_accuracy": accuracy,
            "expert_usage": usage, "routing": json.loads((routed_dir / "0_RoutedTransformer" / "routing.json")
                                                         .read_text()), "results": results}


SBMOE_EPOCHS = 30  # the paper's head recipe (HeadTrainConfig's default), on the union's pairs


def sbmoe_cell(base: str, seed: int) -> dict:
    """Today's best SB-MoE head (the scaled gate, E = 6; sbmoe_zero_shot.md) trained on the multi-task expert's
    pairs (the union, the same dev hold-out) over frozen, cached base embeddings, on both sides, scored by the
    base's similarity at its temperature; evaluated with top-1 and dense inference on every test set. The encoder
    stays frozen because the two-sided fine-tune would re-embed all seven test corpora for every seed (62 min for
    minilm-l3, ~2 h for minilm), more than the whole grid's budget allows."""
    import torch

    from sbmoe.experts.data import base_query_vectors, build_expert_data
    from sbmoe.index.faiss_index import DenseIndex, index_meta_for
    from sbmoe.index.similarity import prepare_vectors
    from sbmoe.models.declared import declared_similarity
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache
    from sbmoe.training.config import TrainConfig
    from sbmoe.training.embedding_head import HeadTrainConfig, apply_head, parameter_shift, train_head
    from sbmoe.training.trainer import make_heads

    started = time.perf_counter()
    model = load_base(base)
    similarity = declared_similarity(model)
    cache = CorpusEmbeddingCache()
    data = build_expert_data(model, DOMAINS, max_queries=MAX_QUERIES, seed=seed, show_progress=False)
    texts = sorted(set(data.queries))
    row_of = {t: i for i, t in enumerate(texts)}
    queries = prepare_vectors(base_query_vectors(model, {str(i): t for i, t in enumerate(texts)}, 64, cache),
                              similarity)
    pairs = np.stack([[row_of[t] for t in data.queries], data.positives], axis=1)
    config = TrainConfig(model=base, gate="scaled", moe="top1", seed=seed)
    torch.manual_seed(seed)
    head = make_heads(config, queries.shape[1])
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    train_config = HeadTrainConfig(temperature=0.05 if similarity == "cosine" else 1.0, seed=seed,
                                   epochs=SBMOE_EPOCHS, normalize=similarity == "cosine")
    trained = time.perf_counter()
    losses = train_head(head, torch_of(queries), torch_of(data.documents), pairs, train_config)
    train_seconds = time.perf_counter() - trained
    sets = TestSets(model, DOMAINS + ZERO_SHOT)
    results: dict[str, dict] = {}
    usage: dict[str, dict] = {}
    for s, (_, test, _, own) in sets.sets.items():
        raw = torch_of(prepare_vectors(base_query_vectors(model, test, 64, cache), similarity))
        docs = torch_of(prepare_vectors(sets.vectors[s], similarity))
        with torch.no_grad():
            top = head.route(raw, "top1").weights.argmax(dim=1)  # each query's expert: the usage shares
            usage[s] = [round(float(v), 4) for v in torch.bincount(top, minlength=config.experts) / len(top)]
            for mode in ("top1", "all"):
                index = DenseIndex.from_embeddings(apply_head(head, docs, mode).numpy(), own.doc_ids,
                                                   index_meta_for(model, "base"))
                results.setdefault(f"sbmoe:{mode}", {})[s] = sets.score(s, apply_head(head, raw, mode).numpy(),
                                                                        index)
    return {"base": base, "seed": seed, "gate": config.gate, "experts": config.experts, "epochs": SBMOE_EPOCHS,
            "pairs": len(pairs), "temperature": train_config.temperature, "normalize": train_config.normalize,
            "loss": [round(v, 4) for v in losses], "shift": parameter_shift(before, head),
            "train_seconds": round(train_seconds, 1), "minutes": round((time.perf_counter() - started) / 60, 2),
            "query_usage": usage, "results": results}


def torch_of(array):
    import torch

    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def docs_set_cell(base: str, name: str) -> dict:
    """One test set's base corpus embeddings (into the cache): the encoding split into cells of <= 45 min."""
    from sbmoe.experts.data import base_query_vectors
    from sbmoe.models.embedding_cache import CorpusEmbeddingCache

    model = load_base(base)
    started = time.perf_counter()
    sets = TestSets(model, (name,))
    encoded = time.perf_counter() - started
    score = sets.score(name, base_query_vectors(model, sets.sets[name][1], 64, CorpusEmbeddingCache()))
    return {"base": base, "similarity": str(model.similarity_fn_name), "encode_minutes": round(encoded / 60, 2),
            "results": {"base": {name: score}}}


def cells(bases: list[str], seeds: list[int]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for base in bases:
        if not cell_file(f"{base}__docs").exists():  # minilm-l3 ran as one cell; the others split per test set
            out += [(f"{base}__docs-{name}", lambda b=base, n=name: docs_set_cell(b, n))
                    for name in DOMAINS + ZERO_SHOT]
        out.append((f"{base}__lr", lambda b=base: lr_cell(b)))
        for seed in seeds:
            for expert in (*DOMAINS, "multitask"):
                out.append((f"{base}__s{seed}__{expert}", lambda b=base, s=seed, e=expert: expert_cell(b, s, e)))
            out.append((f"{base}__s{seed}__eval", lambda b=base, s=seed: eval_cell(b, s)))
            out.append((f"{base}__s{seed}__sbmoe", lambda b=base, s=seed: sbmoe_cell(b, s)))
    return out


PAIRS = {"scifact": 730, "medquad": 12650, "squad": 20000}  # training pairs after dev queries and MAX_QUERIES
SBMOE_PLAN_MINUTES = 6.0  # minilm-l3: union query encoding, 30 head epochs on cached embeddings, 14 searches
TIMING_STEPS = 16  # steps per timed expert (the first is warm-up and not counted)
TIMING_QUERIES = 64 * TIMING_STEPS + 64  # training queries the timed expert samples (mining scales with them)


def time_experts(bases: list[str], domains: tuple[str, ...] = DOMAINS) -> dict:
    """One short expert per base and domain, alone on the machine: seconds per training step (batch 64, after a
    warm-up step) and the setup seconds per training query (loading, base query encoding, mining, dev
    evaluations); written to step_times.json, which the plan reads."""
    import shutil
    import tempfile

    from sbmoe.experts.config import ExpertConfig
    from sbmoe.experts.trainer import train_expert

    times: dict[str, dict] = {}
    for base in bases:
        model = load_base(base)
        for domain in domains:
            TestSets(model, (domain,))  # the base corpus embeddings into the cache first: not part of the timing
            work = Path(tempfile.mkdtemp(prefix="expert-timing-"))
            try:
                runs = []
                for steps in (1, TIMING_STEPS):
                    started = time.perf_counter()
                    folder = train_expert(ExpertConfig(model=base, data=(domain,), output=work / f"steps-{steps}",
                                                       max_steps=steps, max_queries=TIMING_QUERIES, dev_queries=50,
                                                       show_progress=False))  # a fresh base, as a cell loads it
                    record = json.loads((folder / "expert.json").read_text())
                    runs.append((time.perf_counter() - started, record["train_seconds"], record["steps"]))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            (_, train_one, _), (wall, train_all, steps_all) = runs
            step = (train_all - train_one) / (steps_all - 1)  # the first step (warm-up) left out
            setup = max(wall - train_all, 0.0) / record["pairs"]  # loading, encoding, mining, dev evaluations
            times.setdefault(base, {})[domain] = {"step_seconds": round(step, 3),
                                                 "setup_seconds_per_query": round(setup, 5)}
            print(f"{base} {domain}: {step:.2f} s/step, setup {setup * 1000:.1f} ms/query", flush=True)
    record = {"steps": TIMING_STEPS, "batch_size": 64, "times": times, "machine": machine(),
              "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    previous = json.loads((OUT / "step_times.json").read_text()) if (OUT / "step_times.json").exists() else {}
    for base, measured in times.items():
        previous.setdefault("times", {}).setdefault(base, {}).update(measured)
    write_json_file(OUT / "step_times.json", {**previous, **{k: v for k, v in record.items() if k != "times"}})
    return record


def write_plan(bases: list[str], seeds: list[int]) -> dict:
    """Minutes per cell, estimated from the timed seconds per step and setup per query (step_times.json) plus a
    per-epoch overhead fitted on the finished expert cells, and measured where the cell ran; written to plan.json
    and plan.md."""
    done = {p.stem: json.loads(p.read_text()) for p in (OUT / "cells").glob("*.json")}
    timing_file = OUT / "step_times.json"
    if not timing_file.exists():
        raise SystemExit("the plan needs step_times.json: run --time alone on the machine first")
    timing = json.loads(timing_file.read_text())
    reference = timing["times"].get("minilm-l3", {})
    if sorted(reference) != sorted(DOMAINS):
        raise SystemExit("step_times.json needs minilm-l3 on every domain: run --time --bases minilm-l3")
    for base in bases:  # a base timed on some domains only: the others scaled from minilm-l3 by the shared ones
        own = timing["times"].get(base, {})
        if not own:
            raise SystemExit(f"step_times.json has no times for {base}: run --time --bases {base} --domains scifact")
        ratio = float(np.mean([own[d]["step_seconds"] / reference[d]["step_seconds"] for d in own]))
        for domain in DOMAINS:
            own.setdefault(domain, {k: round(v * ratio, 5) for k, v in reference[domain].items()} | {"scaled": True})
        timing["times"][base] = own
    docs_l3 = done["minilm-l3__docs"]["cell_minutes"]
    epoch_minutes = epoch_overhead(done, timing["times"])
    plan: dict[str, float] = {}
    for base in bases:
        times = timing["times"][base]
        scale = times["medquad"]["step_seconds"] / reference["medquad"]["step_seconds"]

        def minutes(domains: tuple[str, ...], epochs: int, t: dict = times) -> float:
            """Training steps at each domain's measured step time, plus setup per training query, plus a dev
            evaluation and a checkpoint per epoch (``epoch_minutes``, fitted on the finished expert cells)."""
            steps, step, setup = training_cost(domains, epochs, t)
            return round((steps * step + setup) / 60 + epochs * epoch_minutes, 1)

        if not (OUT / "cells" / f"{base}__docs.json").exists():
            for name in DOMAINS + ZERO_SHOT:
                plan[f"{base}__docs-{name}"] = round(docs_l3 * scale / len(DOMAINS + ZERO_SHOT), 1)
        plan[f"{base}__lr"] = round(len(LRS) * minutes(("medquad",), 1) * 3000 / PAIRS["medquad"], 1)
        for seed in seeds:
            for expert in (*DOMAINS, "multitask"):
                domains = DOMAINS if expert == "multitask" else (expert,)
                plan[f"{base}__s{seed}__{expert}"] = minutes(domains, EPOCHS[expert])
            plan[f"{base}__s{seed}__eval"] = round(12 * scale, 1)
            plan[f"{base}__s{seed}__sbmoe"] = round(SBMOE_PLAN_MINUTES * scale, 1)
    estimates = dict(plan)
    for name, cell in done.items():
        plan[name] = cell.get("cell_minutes", plan.get(name))
    total = sum(v for v in plan.values() if v)
    write_json_file(OUT / "plan.json", {"cells": plan, "estimates": estimates, "step_times": timing["times"],
                                        "epoch_minutes": round(epoch_minutes, 3), "total_minutes": round(total, 1)})
    lines = ["# Domain experts: cost plan", "",
             f"Seconds per training step of 64 queries and setup (base encoding, mining) per training query, "
             f"timed alone on a 2-core CPU (flags {', '.join(timing['machine']['flags'])}) by "
             "`python eval/domain_experts.py --time` (scaled: a domain not timed for that base, from minilm-l3's "
             "time by the ratio on the domains timed for both):", "",
             "| base | " + " | ".join(DOMAINS) + " |", "|---|" + "---|" * len(DOMAINS)]
    for name, times in timing["times"].items():
        lines.append(f"| {name} | " + " | ".join(f"{times[d]['step_seconds']:.2f} s + "
                                                 f"{times[d]['setup_seconds_per_query'] * 1e3:.1f} ms/q"
                                                 + (" (scaled)" if times[d].get("scaled") else "")
                                                 for d in DOMAINS) + " |")
    lines += ["", "A cell's minutes are estimated as steps x seconds per step + setup per training query + "
              f"{epoch_minutes:.2f} min per epoch (dev evaluation, checkpoint: fitted on the finished expert cells), "
              "and measured once it has run (✓).", "",
              "| cell | estimated | measured | measured / estimated |", "|---|---|---|---|"]
    lines += [f"| {name} | {estimates.get(name, '')} | {plan[name] if name in done else ''} | "
              + (f"{plan[name] / estimates[name]:.2f}" if name in done and estimates.get(name) else "") + " |"
              for name in plan]
    lines += ["", f"Total: {total / 60:.1f} h ({sum(1 for n in plan if n in done)} of {len(plan)} cells done)."]
    (OUT / "plan.md").write_text("\n".join(lines) + "\n")
    return plan


def expert_cell_parts(name: str) -> tuple[str, str, str] | None:
    """(base, "s<seed>", expert) of an expert cell's name (``<base>__s<seed>__<expert>``); None for other cells."""
    parts = name.split("__")
    if len(parts) != 3 or parts[2] not in (*DOMAINS, "multitask"):
        return None
    return parts[0], parts[1], parts[2]


def training_cost(domains: tuple[str, ...], epochs: int, times: dict) -> tuple[int, float, float]:
    """(steps, seconds per step, setup seconds) of an expert on ``domains`` for ``epochs``, from step_times."""
    pairs = {d: PAIRS[d] for d in domains}
    steps = sum(pairs.values()) // 64 * epochs
    step = sum(times[d]["step_seconds"] * n for d, n in pairs.items()) / sum(pairs.values())
    setup = sum(times[d]["setup_seconds_per_query"] * n for d, n in pairs.items())
    return steps, step, setup


def epoch_overhead(done: dict[str, dict], times: dict[str, dict]) -> float:
    """Minutes per epoch beyond the training steps and setup (dev evaluation, checkpoint), the median over the
    finished expert cells that ran uncontended (a cell whose steps took over twice the timed step ran beside other
    work); 1.0 before any has run."""
    values = []
    for name, cell in done.items():
        parts = expert_cell_parts(name)
        if parts is None or parts[0] not in times:
            continue
        base, _, expert = parts
        domains = DOMAINS if expert == "multitask" else (expert,)
        epochs = EPOCHS[expert]
        steps, step, setup = training_cost(domains, epochs, times[base])
        if cell.get("train_seconds") and cell["train_seconds"] > 2 * steps * step:
            continue
        values.append((cell["cell_minutes"] - (steps * step + setup) / 60) / epochs)
    return max(float(np.median(values)), 0.0) if values else 1.0


def write_json_file(path: Path, value: dict) -> None:
    from sbmoe.atomic import write_json

    write_json(path, value)


def planned_minutes(name: str) -> float | None:
    plan = OUT / "plan.json"
    if not plan.exists():
        return None
    return json.loads(plan.read_text()).get("cells", {}).get(name)


def finished(name: str) -> bool:
    """Whether a cell need not run: its JSON exists, and for an expert whose seed's eval has not run yet, its folder
    too (the folders are machine-local: on another machine the expert is trained again for that eval)."""
    if not cell_file(name).exists():
        return False
    parts = expert_cell_parts(name)
    if parts is None:
        return True
    base, seed, expert = parts
    return cell_file(f"{base}__{seed}__eval").exists() or (RUNS / base / seed / expert / "expert.json").is_file()


def run(bases: list[str], seeds: list[int], budget_min: float, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    deadline = time.time() + budget_min * 60
    for name, make in cells(bases, seeds):
        if finished(name):
            continue
        planned = planned_minutes(name)
        if planned is not None and "__docs" not in name and not name.endswith(("__lr", "__eval", "__sbmoe")):
            planned = min(planned, SLICE_MINUTES + 5)  # an expert runs in slices that resume
        if planned is not None and time.time() + planned * 60 > deadline:
            left = (deadline - time.time()) / 60
            print(f"stop: {name} is planned at {planned:.0f} min and the budget has {left:.0f}")
            return
        if time.time() > deadline:
            print("stop: budget spent")
            return
        started = time.perf_counter()
        print(f"cell {name} ...", flush=True)
        record = make()
        if record is None:  # a time slice of a longer expert, or an eval waiting for one: not a finished cell
            continue
        record["cell_minutes"] = round((time.perf_counter() - started) / 60, 2)
        record["machine"] = machine()
        write_cell(name, record)
        print(f"cell {name}: {record['cell_minutes']} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", default="minilm-l3,minilm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget-min", type=float, default=170.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--plan", action="store_true", help="Write plan.json and plan.md from the measured cells.")
    parser.add_argument("--time", action="store_true", help="Time one short expert per base and domain (alone on "
                        "the machine) into step_times.json.")
    parser.add_argument("--domains", default=",".join(DOMAINS), help="With --time: the domains to time.")
    args = parser.parse_args()
    if args.summarize:
        from domain_experts_summary import summarize

        summarize(OUT)
        return
    if args.time:
        import torch

        torch.set_num_threads(args.threads)
        time_experts(args.bases.split(","), tuple(args.domains.split(",")))
        return
    if args.plan:
        write_plan(args.bases.split(","), [int(s) for s in args.seeds.split(",")])
        return
    run(args.bases.split(","), [int(s) for s in args.seeds.split(",")], args.budget_min, args.threads)


if __name__ == "__main__":
    main()
