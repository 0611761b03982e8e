"""``sbmoe expert route``: build a routed model folder from a base encoder and trained experts.

Routing data comes from a seeded sample of each expert's own training queries (``routing_queries`` per domain):

- ``pilot`` (RouterRetriever): every sampled query is encoded by every expert and scored by the reciprocal rank
  of its first relevant document in its own corpus (ties: the similarity to that document); queries are grouped
  by the expert that ranks them best, each group is clustered by k-means in the base encoder's space, and the
  unit-length centroids become that expert's pilots. A query goes to the owner of its most similar pilot.
- ``supervised`` (DESIRE-ME's idea): a softmax classifier of the query's training domain on the base embedding.
- ``gate`` (the language-model scheme): a softmax over experts from the base embedding, trained with the
  retrieval loss through the experts' (cached) query embeddings of the same sample; inference mixes all experts.
- ``dataset``: the centroid of each domain's queries; a batch goes to the expert of the nearest centroid.
- ``average``: the mean of the experts' query embeddings (no table).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from ..atomic import atomic_dir
from ..data import BeirDataset
from ..index.similarity import prepare_vectors
from ..models.declared import copy_declarations, declared_similarity
from ..models.embedding_cache import CorpusEmbeddingCache
from ..models.encoder import EncoderConfig, load_encoder
from ..models.encoding import encode_corpus, encode_texts
from ..models.fingerprint import model_fingerprint
from .adapters import load_lora, read_expert
from .config import RoutedConfig
from .data import base_query_vectors
from .routed import ROUTING_FILE, RoutedTransformer, RoutingTables

logger = logging.getLogger(__name__)


@dataclass
class RoutingSample:
    """Sampled training queries of every expert's domains, with what routing is built from."""

    texts: list[str]
    domain: np.ndarray  # the index of the expert whose training data the query came from
    base: np.ndarray  # unit-length base query embeddings (the routing space)
    positive: list[np.ndarray]  # per query: unit-length (or raw, for dot) relevant document vectors
    corpus: list[int]  # per query: index into ``corpora``
    corpora: list[np.ndarray]  # prepared base document embeddings per dataset
    relevant: list[set[int]]  # per query: rows of its corpus that are relevant


def sample_routing_queries(base: SentenceTransformer, records: list[dict], per_domain: int, seed: int,
                           batch_size: int) -> RoutingSample:
    similarity = declared_similarity(base)
    cache = CorpusEmbeddingCache()
    texts, domain, corpus_of, relevant, positive, corpora = [], [], [], [], [], []
    for number, record in enumerate(records):
        for name in record["datasets"]:
            dataset = BeirDataset.open(name)
            queries, qrels = dataset.load_split(record.get("split", "train"))
            doc_ids, raw = encode_corpus(base, dataset, batch_size, cache=cache, show_progress=False)
            vectors = prepare_vectors(raw, similarity)
            corpora.append(vectors)
            row_of = {d: r for r, d in enumerate(doc_ids)}
            judged = sorted(q for q, rels in qrels.items() if q in queries and any(v > 0 and d in row_of
                                                                                    for d, v in rels.items()))
            rng = np.random.default_rng([seed, zlib.crc32(dataset.name.encode()), 7])
            chosen = [judged[i] for i in rng.permutation(len(judged))[:per_domain]]
            for qid in chosen:
                rows = {row_of[d] for d, v in qrels[qid].items() if v > 0 and d in row_of}
                texts.append(queries[qid])
                domain.append(number)
                corpus_of.append(len(corpora) - 1)
                relevant.append(rows)
                positive.append(vectors[sorted(rows)])
    raw = base_query_vectors(base, {str(i): t for i, t in enumerate(texts)}, batch_size, cache)
    routing = F.normalize(torch.tensor(np.asarray(raw, dtype=np.float32)), dim=-1).numpy()
    return RoutingSample(texts, np.asarray(domain), routing, positive, corpus_of, corpora, relevant)


def expert_query_vectors(base: SentenceTransformer, names: list[str], folders: dict[str, Path], texts: list[str],
                         batch_size: int) -> list[np.ndarray]:
    """Each expert's query embeddings of ``texts`` (prepared for the similarity), its adapter loaded in turn."""
    similarity = declared_similarity(base)
    auto_model = base[0].auto_model
    out = []
    for name in names:
        load_lora(auto_model, name, folders[name])
        auto_model.set_adapter(name)
        out.append(prepare_vectors(encode_texts(base, texts, batch_size, task="query"), similarity))
        auto_model.delete_adapter(name)
    return out


def reciprocal_rank_scores(sample: RoutingSample, vectors: np.ndarray) -> np.ndarray:
    """Per query: 1 / rank of its first relevant document in its own corpus, plus a tie-break below 1e-3."""
    scores = np.zeros(len(sample.texts))
    for i, (corpus, rows) in enumerate(zip(sample.corpus, sample.relevant, strict=True)):
        sims = sample.corpora[corpus] @ vectors[i]
        best = max(sims[r] for r in rows)
        rank = 1 + int((sims > best).sum())
        scores[i] = 1.0 / rank + 1e-3 * float(np.tanh(best))
    return scores


def pilot_tables(sample: RoutingSample, scores: np.ndarray, per_expert: int, seed: int) -> tuple[np.ndarray, ...]:
    """RouterRetriever's pilots: queries grouped by their best expert, k-means centroids of each group."""
    import faiss

    best = scores.argmax(axis=1)
    pilots, owners = [], []
    for expert in range(scores.shape[1]):
        group = np.ascontiguousarray(sample.base[best == expert], dtype=np.float32)
        if len(group) == 0:
            continue
        if len(group) <= per_expert:
            centres = group
        else:
            kmeans = faiss.Kmeans(group.shape[1], per_expert, niter=25, seed=seed, spherical=True, verbose=False)
            kmeans.train(group)
            centres = kmeans.centroids
        pilots.append(centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12))
        owners += [expert] * len(centres)
    return np.concatenate(pilots).astype(np.float32), np.asarray(owners, dtype=np.int64), best


def train_softmax(features: np.ndarray, loss_of, classes: int, epochs: int, lr: float, seed: int) -> tuple:
    """A linear softmax layer (weight, bias) trained full-batch with Adam on ``loss_of(logits, rows)``."""
    torch.manual_seed(seed)
    x = torch.from_numpy(features.astype(np.float32))
    layer = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for rows in np.array_split(rng.permutation(len(x)), max(1, len(x) // 256)):
            loss = loss_of(layer(x[rows]), rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return layer.weight.detach().clone(), layer.bias.detach().clone()


def build_tables(sample: RoutingSample, expert_vectors: list[np.ndarray], config: RoutedConfig,
                 temperature: float, similarity: str) -> tuple[dict[str, torch.Tensor], dict]:
    experts = len(expert_vectors)
    scores = np.stack([reciprocal_rank_scores(sample, v) for v in expert_vectors], axis=1)
    pilots, owners, best = pilot_tables(sample, scores, config.pilots_per_expert, config.seed)
    domain = torch.from_numpy(sample.domain)
    classifier = train_softmax(sample.base, lambda logits, rows: F.cross_entropy(logits, domain[rows]), experts,
                               config.gate_epochs, config.gate_lr, config.seed)
    stacked = torch.from_numpy(np.stack(expert_vectors, axis=1))  # (queries, experts, dim)
    first_positive = torch.from_numpy(np.stack([p[0] for p in sample.positive]).astype(np.float32))

    def gate_loss(logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        mixed = (torch.softmax(logits, dim=-1).unsqueeze(-1) * stacked[rows]).sum(1)
        if similarity == "cosine":
            mixed = F.normalize(mixed, dim=-1)
        scores = mixed @ first_positive[rows].T / temperature  # in-batch negatives, as the experts trained
        return F.cross_entropy(scores, torch.arange(len(rows)))

    gate = train_softmax(sample.base, gate_loss, experts, config.gate_epochs, config.gate_lr, config.seed)
    centroids = np.stack([sample.base[sample.domain == e].mean(axis=0) for e in range(experts)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    tables = {"pilots": torch.from_numpy(pilots), "pilot_owner": torch.from_numpy(owners),
              "centroids": torch.from_numpy(centroids.astype(np.float32)), "gate_weight": gate[0],
              "gate_bias": gate[1], "classifier_weight": classifier[0], "classifier_bias": classifier[1]}
    facts = {"routing_queries": len(sample.texts), "best_expert_share": np.bincount(best, minlength=experts).tolist(),
             "pilots_per_expert": np.bincount(owners, minlength=experts).tolist()}
    return tables, facts


def build_routed_model(config: RoutedConfig) -> Path:
    """Write a routed model folder: the base pipeline with a ``RoutedTransformer`` in place of its Transformer."""
    config.validate()
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    folders = {name: Path(folder) for name, folder in config.experts.items()}
    records = [read_expert(folder) for folder in folders.values()]
    names = list(folders)
    base = load_encoder(EncoderConfig(model=records[0]["base_model"], batch_size=config.batch_size,
                                      backend="torch"))  # its torch fingerprint is the one the experts record
    fingerprint = model_fingerprint(base)
    for name, record in zip(names, records, strict=True):
        if record["kind"] != "lora":
            raise ValueError(f"{folders[name]}: a routed model holds LoRA experts; {name!r} is a {record['kind']} "
                             "expert")
        if record["base_fingerprint"] != fingerprint:
            raise ValueError(f"{folders[name] / 'expert.json'}: expert {name!r} was trained on another base model "
                             f"than {records[0]['base_model']} (fingerprint {record['base_fingerprint'][:12]}, "
                             f"base {fingerprint[:12]})")
    similarity = declared_similarity(base)
    sample = sample_routing_queries(base, records, config.routing_queries, config.seed, config.batch_size)
    with tempfile.TemporaryDirectory(prefix=".routed-", dir=output.parent if output.parent.exists() else None) as work:
        staging = Path(work) / "module"
        base[0].save(str(staging / "transformer"))  # the clean base weights, before any adapter is added
        for name in names:
            shutil.copytree(folders[name], staging / "experts" / name)
        vectors = expert_query_vectors(base, names, folders, sample.texts, config.batch_size)
        tables, facts = build_tables(sample, vectors, config, float(records[0].get("temperature", 0.05)), similarity)
        RoutingTables(tables).save(staging)
        info = {"mode": config.mode, "experts": names, "base_model": records[0]["base_model"],
                "base_fingerprint": fingerprint, "similarity": similarity, "seed": config.seed,
                "pilots_per_expert": config.pilots_per_expert, **facts}
        (staging / ROUTING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        module = RoutedTransformer(staging)
        routed = copy_declarations(base, SentenceTransformer(modules=[module, *list(base)[1:]], device="cpu"))
        with atomic_dir(output, overwrite=config.overwrite) as tmp:
            routed.save(str(tmp), create_model_card=False)
    return output


def routed_experts(folder: Path) -> dict[str, Path]:
    """name -> expert folder inside a routed model folder."""
    module = Path(folder) / "0_RoutedTransformer"
    info = json.loads((module / ROUTING_FILE).read_text(encoding="utf-8"))
    return {name: module / "experts" / name for name in info["experts"]}


def change_experts(folder: Path, output: Path, add: dict[str, Path] | None = None, remove: tuple[str, ...] = (),
                   config: RoutedConfig | None = None) -> Path:
    """A new routed model with experts added or removed; the other experts' files are copied unchanged and only
    the routing tables are rebuilt."""
    experts = {k: v for k, v in routed_experts(folder).items() if k not in remove}
    unknown = [name for name in remove if name not in routed_experts(folder)]
    if unknown:
        raise ValueError(f"{folder}: no expert named {unknown[0]!r} (experts: {', '.join(routed_experts(folder))})")
    experts.update(add or {})
    base = config or RoutedConfig()
    with tempfile.TemporaryDirectory(prefix=".experts-") as work:  # copies: ``output`` may replace ``folder``
        copies = {name: Path(shutil.copytree(path, Path(work) / name)) for name, path in experts.items()}
        mode = json.loads((Path(folder) / "0_RoutedTransformer" / ROUTING_FILE).read_text())["mode"]
        return build_routed_model(RoutedConfig(**{**base.__dict__, "experts": copies, "output": output,
                                                  "mode": mode, "overwrite": True}))
