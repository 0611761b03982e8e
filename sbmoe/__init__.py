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

__version__ = "0.1.0"

from .data import BeirDataset, load_queries, resolve_dataset  # noqa: E402
from .evaluation.benchmark import EvalConfig, evaluate, evaluate_systems  # noqa: E402
from .evaluation.metrics import evaluate_run  # noqa: E402
from .evaluation.routing import RoutingConfig, routing_report  # noqa: E402
from .evaluation.systems import SystemsConfig, build_systems  # noqa: E402
from .index.builder import IndexConfig, build_index  # noqa: E402
from .index.retriever import Retriever, search_to_trec  # noqa: E402
from .models.encoder import EncoderConfig, load_encoder  # noqa: E402
from .models.encoding import encode_corpus, encode_texts  # noqa: E402
from .models.export import ExportConfig, export_model  # noqa: E402
from .models.sbmoe_head import SBMoEHead  # noqa: E402
from .runs import read_trec_run, write_trec_run  # noqa: E402
from .training.config import TrainConfig  # noqa: E402
from .training.trainer import train  # noqa: E402

__all__ = [
    "BeirDataset", "EncoderConfig", "EvalConfig", "ExportConfig", "IndexConfig", "Retriever", "RoutingConfig",
    "SBMoEHead", "SystemsConfig", "TrainConfig", "build_index", "build_systems", "encode_corpus", "encode_texts",
    "evaluate", "evaluate_run", "evaluate_systems", "export_model", "load_encoder", "load_queries", "read_trec_run",
    "resolve_dataset", "routing_report", "search_to_trec", "train", "write_trec_run",
]
