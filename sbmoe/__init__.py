"""sbmoe: dense retrieval with a single-block Mixture-of-Experts head (SB-MoE).

The public API, in the order a user meets it::

    import sbmoe

    model = sbmoe.load_encoder(sbmoe.EncoderConfig(model="minilm"))     # a SentenceTransformer
    dataset = sbmoe.BeirDataset.open("scifact")                          # registry: name or BEIR folder
    retriever = sbmoe.Retriever.from_dataset(model, dataset)             # exact FAISS index in memory
    queries, qrels = dataset.load_split("test")
    run = retriever.search(queries, k=100, drop_self_hits=dataset.drop_self_hits)
    print(sbmoe.evaluate_run(qrels, run, ["nDCG@10", "R@100"]))

    sbmoe.build_index(sbmoe.IndexConfig("scifact", "indexes/scifact", sbmoe.EncoderConfig()))  # on disk
    sbmoe.evaluate(sbmoe.EvalConfig(datasets=["scifact", "cranfield"]))  # systems x datasets -> leaderboard
    sbmoe.train(sbmoe.TrainConfig(model="minilm-l3", output="models/l3-sbmoe", gate="scaled"))

Where things live: ``sbmoe.data`` (datasets), ``sbmoe.models`` (encoders, the SB-MoE head), ``sbmoe.index``
(FAISS), ``sbmoe.bm25`` (BM25 and fusion), ``sbmoe.evaluation`` (metrics, systems, reports, routing
analytics), ``sbmoe.training`` (losses, trainer), ``sbmoe.moe`` (routers, experts, dispatch), ``sbmoe.lm``
(the MoE language-model testbed). The ``sbmoe`` command is a thin layer over these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import exports_of, lazy_exports
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .data import BeirDataset, load_queries, resolve_dataset
    from .evaluation.benchmark import EvalConfig, evaluate, evaluate_systems
    from .evaluation.metrics import evaluate_run
    from .evaluation.routing import RoutingConfig, routing_report
    from .evaluation.systems import SystemsConfig, build_systems
    from .index.builder import IndexConfig, build_index
    from .index.retriever import Retriever, search_to_trec
    from .models.encoder import EncoderConfig, load_encoder
    from .models.encoding import encode_corpus, encode_texts
    from .models.export import ExportConfig, export_model
    from .models.sbmoe_head import SBMoEHead
    from .runs import read_trec_run, write_trec_run
    from .training.config import TrainConfig
    from .training.trainer import train

# Each name loads its submodule on first use, so ``import sbmoe`` (and the CLI) start without torch.
_SUBMODULES = {
    ".data": ("BeirDataset", "load_queries", "resolve_dataset"),
    ".evaluation.benchmark": ("EvalConfig", "evaluate", "evaluate_systems"),
    ".evaluation.metrics": ("evaluate_run",),
    ".evaluation.routing": ("RoutingConfig", "routing_report"),
    ".evaluation.systems": ("SystemsConfig", "build_systems"),
    ".index.builder": ("IndexConfig", "build_index"),
    ".index.retriever": ("Retriever", "search_to_trec"),
    ".models.encoder": ("EncoderConfig", "load_encoder"),
    ".models.encoding": ("encode_corpus", "encode_texts"),
    ".models.export": ("ExportConfig", "export_model"),
    ".models.sbmoe_head": ("SBMoEHead",),
    ".runs": ("read_trec_run", "write_trec_run"),
    ".training.config": ("TrainConfig",),
    ".training.trainer": ("train",),
}
__getattr__, __dir__ = lazy_exports(__name__, exports_of(_SUBMODULES))

__all__ = [
    "BeirDataset", "EncoderConfig", "EvalConfig", "ExportConfig", "IndexConfig", "Retriever", "RoutingConfig",
    "SBMoEHead", "SystemsConfig", "TrainConfig", "build_index", "build_systems", "encode_corpus", "encode_texts",
    "evaluate", "evaluate_run", "evaluate_systems", "export_model", "load_encoder", "load_queries", "read_trec_run",
    "resolve_dataset", "routing_report", "search_to_trec", "train", "write_trec_run",
]
