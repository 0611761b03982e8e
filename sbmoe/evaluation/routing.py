"""Routing analytics of an SB-MoE model: which expert each query and document goes to, per dataset. For a routed
model of query-side experts (``sbmoe expert route``) documents all stay with the base encoder, so only the query
shares under its routing mode are reported.

Reported per dataset: the share of documents and of queries routed to each expert, the entropy of the
document shares (ln E when balanced, 0 when one expert takes everything), and co-routing: over judged
queries, the mean share of a query's relevant documents that go to the query's own expert, beside the
share expected if queries and documents were routed independently with the same usage (sum_e q_e d_e).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_file, write_json
from ..data import BeirDataset
from ..models.embedding_cache import CorpusEmbeddingCache
from ..models.encoder import EncoderConfig, load_encoder

if TYPE_CHECKING:  # torch and the encoder stack load with the model, not with RoutingConfig
    from sentence_transformers import SentenceTransformer

    from ..models.sbmoe_head import SBMoEHead


@dataclass
class RoutingConfig:
    """Arguments of ``sbmoe routing``."""

    model: str = ""
    datasets: list[str] = field(default_factory=lambda: ["scifact"])
    split: str | None = None
    output_dir: Path | None = None
    batch_size: int = EncoderConfig.batch_size
    use_cache: bool = True
    show_progress: bool = True


@dataclass
class DatasetRouting:
    dataset: str
    num_experts: int
    document_shares: list[float]
    query_shares: list[float]
    entropy: float
    normalized_entropy: float
    co_routing: float
    co_routing_chance: float
    judged_queries: int


@dataclass
class RoutingReport:
    model: str
    datasets: list[DatasetRouting]

    def table(self) -> str:
        side = "document" if any(r.document_shares for r in self.datasets) else "query"
        lines = [f"{'dataset':<20} {'entropy':>8} {'H/lnE':>6} {'co-route':>8} {'chance':>7}  {side} shares"]
        for r in self.datasets:
            shares = " ".join(f"{s:.2f}" for s in (r.document_shares or r.query_shares))
            lines.append(f"{r.dataset:<20} {r.entropy:>8.3f} {r.normalized_entropy:>6.2f} {r.co_routing:>8.3f} "
                         f"{r.co_routing_chance:>7.3f}  {shares}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"model": self.model, "datasets": [asdict(r) for r in self.datasets]}


def shares(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Share of items routed to each expert (sums to 1)."""
    counts = np.bincount(experts, minlength=num_experts).astype(np.float64)
    return counts / max(1.0, counts.sum())


def entropy(p: np.ndarray) -> float:
    """Entropy in nats of a distribution; never below +0.0 (a one-hot would give -0.0, printed as -0.00)."""
    nz = p[p > 0]
    return max(0.0, float(-(nz * np.log(nz)).sum()))


def route(head: SBMoEHead, pooled: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """The expert each pooled embedding is routed to under the head's inference mode (its top expert)."""
    import torch

    from ..models.pipeline import pooled_batches

    head.eval()
    out = []
    device = next(head.parameters()).device
    with torch.inference_mode():
        for x in pooled_batches(pooled, batch_size, device):
            out.append(head.route(x).indices[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def co_routing(query_experts: dict[str, int], doc_experts: dict[str, int], qrels: dict[str, dict[str, int]]) -> float:
    """Mean over judged queries of the share of their relevant documents on the query's expert."""
    per_query = []
    for qid, judged in qrels.items():
        relevant = [d for d, rel in judged.items() if rel > 0 and d in doc_experts]
        if qid in query_experts and relevant:
            per_query.append(sum(doc_experts[d] == query_experts[qid] for d in relevant) / len(relevant))
    return float(np.mean(per_query)) if per_query else math.nan


def dataset_routing(model: SentenceTransformer, dataset: BeirDataset, split: str | None, batch_size: int,
                    cache: CorpusEmbeddingCache | None, show_progress: bool) -> DatasetRouting:
    """Route a dataset's corpus and judged queries through the model's head(s)."""
    from ..models.encoding import encode_corpus, encode_texts
    from ..models.pipeline import pooling_prefix, sbmoe_heads

    if hasattr(model[0], "expert_names"):  # a routed model of query-side experts
        return routed_dataset_routing(model, dataset, split, batch_size)
    heads = sbmoe_heads(model)
    if not heads:
        raise ValueError("model has no SB-MoE head to analyse (train one with `sbmoe train --moe top1`)")
    query_head, doc_head = heads[0], heads[-1]  # separate heads: Router holds the query route first
    prefix = pooling_prefix(model)
    doc_ids, pooled_docs = encode_corpus(prefix, dataset, batch_size, cache=cache, show_progress=show_progress)
    queries, qrels = dataset.load_split(split)
    qids = list(queries)
    pooled_queries = encode_texts(prefix, [queries[q] for q in qids], batch_size, task="query")
    doc_route, query_route = route(doc_head, pooled_docs), route(query_head, pooled_queries)
    num_experts = doc_head.num_experts
    doc_shares, query_shares = shares(doc_route, num_experts), shares(query_route, num_experts)
    h = entropy(doc_shares)
    return DatasetRouting(
        dataset=dataset.name, num_experts=num_experts,
        document_shares=[round(float(s), 4) for s in doc_shares],
        query_shares=[round(float(s), 4) for s in query_shares], entropy=round(h, 4),
        normalized_entropy=round(h / math.log(num_experts), 4) if num_experts > 1 else 1.0,
        co_routing=round(co_routing(dict(zip(qids, query_route.tolist(), strict=True)),
                                    dict(zip(doc_ids, doc_route.tolist(), strict=True)), qrels), 4),
        co_routing_chance=round(float(doc_shares @ query_shares), 4), judged_queries=len(qids))


def routed_dataset_routing(model: SentenceTransformer, dataset: BeirDataset, split: str | None,
                           batch_size: int) -> DatasetRouting:
    """Query shares of a routed model's experts under its mode; routing reads the base embedding, which is what
    the model gives a text encoded as a document."""
    import torch
    import torch.nn.functional as F

    from ..models.encoding import encode_texts

    module = model[0]
    queries, _ = dataset.load_split(split)
    base = encode_texts(model, list(queries.values()), batch_size, task="document")
    experts = len(module.expert_names)
    weights = module.tables.weights(F.normalize(torch.from_numpy(base), dim=-1), module.mode, experts)
    query_shares = weights.mean(dim=0).numpy().astype(np.float64)
    h = entropy(query_shares)
    return DatasetRouting(dataset=dataset.name, num_experts=experts, document_shares=[],
                          query_shares=[round(float(s), 4) for s in query_shares], entropy=round(h, 4),
                          normalized_entropy=round(h / math.log(experts), 4) if experts > 1 else 1.0,
                          co_routing=math.nan, co_routing_chance=math.nan, judged_queries=len(queries))


def routing_report(config: RoutingConfig, model: SentenceTransformer | None = None) -> RoutingReport:
    """``sbmoe routing``: routing statistics per dataset; with ``output_dir``, routing.json and routing.png."""
    model = model if model is not None else load_encoder(EncoderConfig(model=config.model,
                                                                       batch_size=config.batch_size, backend="torch"))
    cache = CorpusEmbeddingCache() if config.use_cache else None
    report = RoutingReport(config.model, [dataset_routing(model, BeirDataset.open(name), config.split,
                                                          config.batch_size, cache, config.show_progress)
                                          for name in config.datasets])
    if config.output_dir is not None:
        write_json(Path(config.output_dir) / "routing.json", report.to_json())
        plot_routing(report, Path(config.output_dir) / "routing.png")
    return report


def plot_routing(report: RoutingReport, path: Path) -> None:
    """Bars of the document share per expert, one group per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_experts = max(r.num_experts for r in report.datasets)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(report.datasets) * num_experts ** 0.5), 3.4))
    width = 0.8 / num_experts
    for e in range(num_experts):
        values = [(r.document_shares or r.query_shares)[e] if e < r.num_experts else 0.0 for r in report.datasets]
        ax.bar([i + e * width for i in range(len(report.datasets))], values, width, label=f"expert {e}")
    ax.set_xticks([i + width * (num_experts - 1) / 2 for i in range(len(report.datasets))],
                  [r.dataset for r in report.datasets])
    ax.set_ylabel("share of documents")
    ax.set_title(f"SB-MoE routing: {Path(report.model).name or 'model'}", fontsize=9)
    ax.legend(fontsize=7, ncol=min(num_experts, 6))
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
