"""``sbmoe train``: fine-tune an encoder with or without the SB-MoE head through sentence-transformers' trainer.

Data: a BEIR train split (positives from qrels, one hard negative per pair mined with the base encoder)
or a triples file (TSV ``query<TAB>positive<TAB>negative`` or JSONL with those keys). A seeded slice of
the training queries is held out as a dev set; its nDCG@10 drives evaluation, keep-best and early
stopping. Loss: MultipleNegativesRankingLoss (in-batch + hard negatives, dot products / temperature)
plus the routers' auxiliary loss. Checkpoints go to ``<output>-checkpoints``; rerunning the same command
resumes from the last one. The final model is written atomically to ``output``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.util import dot_score
from torch import Tensor, nn
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

from ..atomic import atomic_dir
from ..data import BeirDataset, DataFormatError
from .embedding_cache import CorpusEmbeddingCache
from .embedding_table import EmbeddingTable
from .encoder import EncoderConfig, encode_texts, load_encoder, normalizes, pooling_prefix
from .retriever import Retriever
from .sbmoe_head import SBMoEHead

logger = logging.getLogger(__name__)

MOE_CHOICES = ("none", "top1", "all", "random")


@dataclass
class TrainConfig:
    """Arguments of ``sbmoe train``; defaults follow the SB-MoE paper where it gives one."""

    model: str = "minilm"
    output: Path = Path("models/sbmoe")
    data: str = "scifact"
    split: str = "train"
    moe: str = "top1"
    experts: int = 6
    latent: int | None = None
    separate_heads: bool = False
    aux_loss_weight: float = 0.0
    lr: float = 1e-4
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 256
    temperature: float | None = None
    seed: int = 42
    freeze_encoder: bool = False
    dev_fraction: float = 0.1
    dev_distractors: int = 1000
    eval_steps: int | None = None
    patience: int | None = None
    show_progress: bool = True
    overwrite: bool = False

    def resolved_temperature(self, normalized: bool) -> float:
        """The paper's temperature 1 suits raw dot products; with L2-normalized embeddings (cosine in
        [-1, 1]) a temperature of 1 gives almost no gradient, so those default to 0.05 (scale 20)."""
        if self.temperature is not None:
            return self.temperature
        return 0.05 if normalized else 1.0

    @property
    def checkpoint_dir(self) -> Path:
        return Path(f"{self.output}-checkpoints")


@dataclass
class TrainingData:
    """Triples for training and a held-out retrieval task for dev evaluation."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]
    dev_queries: dict[str, str]
    dev_corpus: dict[str, str]
    dev_qrels: dict[str, set[str]]
    info: dict[str, Any] = field(default_factory=dict)


def _split_dev(ids: list[str], fraction: float, seed: int) -> set[str]:
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: max(1, round(len(shuffled) * fraction))]) if fraction > 0 else set()


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """(query, positive, negative) rows from a TSV or JSONL file, with file:line errors."""
    triples: list[tuple[str, str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                    triples.append((obj["query"], obj["positive"], obj["negative"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataFormatError(f"{path}:{line_no}: expected JSON with query, positive, negative "
                                          f"({type(exc).__name__})") from None
            else:
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3:
                    raise DataFormatError(f"{path}:{line_no}: expected query<TAB>positive<TAB>negative")
                triples.append((fields[0], fields[1], fields[2]))
    if not triples:
        raise DataFormatError(f"{path}: no training triples")
    return triples


def triples_data(path: Path, dev_fraction: float, seed: int) -> TrainingData:
    """Training data from a triples file; dev queries retrieve among all dev positives and negatives."""
    triples = read_triples(path)
    dev_rows = _split_dev([str(i) for i in range(len(triples))], dev_fraction, seed)
    data = TrainingData([], [], [], {}, {}, {}, {"source": str(path), "triples": len(triples)})
    texts: dict[str, str] = {}
    for i, (query, positive, negative) in enumerate(triples):
        if str(i) in dev_rows:
            pos_id = texts.setdefault(positive, f"p{len(texts)}")
            texts.setdefault(negative, f"p{len(texts)}")
            qid = f"q{i}"
            data.dev_queries[qid] = query
            data.dev_qrels.setdefault(qid, set()).add(pos_id)
        else:
            data.anchors.append(query)
            data.positives.append(positive)
            data.negatives.append(negative)
    data.dev_corpus = {doc_id: text for text, doc_id in texts.items()}
    return data


def beir_data(dataset: BeirDataset, split: str, miner: SentenceTransformer, config: TrainConfig) -> TrainingData:
    """Training data from a BEIR split; one hard negative per (query, positive), mined with ``miner``.

    The negative is the highest-ranked document that is not judged relevant; dev evaluation searches the
    dev queries' positives and their mined negatives plus ``dev_distractors`` random documents.
    """
    queries, qrels = dataset.load_split(split)
    dev_ids = _split_dev(list(queries), config.dev_fraction, config.seed)
    retriever = Retriever.from_dataset(miner, dataset, config.batch_size, CorpusEmbeddingCache(),
                                       config.show_progress)
    run = retriever.search(queries, k=20, drop_self_hits=dataset.drop_self_hits)
    corpus = {doc.doc_id: doc.as_text() for doc in dataset.iter_corpus()}
    data = TrainingData([], [], [], {}, {}, {}, {"source": dataset.name, "split": split,
                                                  "train_queries": len(queries) - len(dev_ids),
                                                  "dev_queries": len(dev_ids)})
    dev_docs: set[str] = set()
    for qid, text in queries.items():
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        negative = next((d for d in run[qid] if d not in relevant), None)
        if qid in dev_ids:
            data.dev_queries[qid] = text
            data.dev_qrels[qid] = relevant
            dev_docs |= relevant | ({negative} if negative else set())
            continue
        for positive in sorted(relevant):
            if negative is None:
                continue
            data.anchors.append(text)
            data.positives.append(corpus[positive])
            data.negatives.append(corpus[negative])
    others = sorted(set(corpus) - dev_docs)
    dev_docs |= set(random.Random(config.seed).sample(others, min(config.dev_distractors, len(others))))
    data.dev_corpus = {d: corpus[d] for d in sorted(dev_docs)}
    data.info["train_pairs"] = len(data.anchors)
    return data


def make_heads(config: TrainConfig, dim: int) -> nn.Module | None:
    """The SB-MoE head, or an ST Router with separate query and document heads; None for ``--moe none``."""
    if config.moe == "none":
        return None

    def head() -> SBMoEHead:
        return SBMoEHead(dim, config.experts, config.latent, mode=config.moe,
                         aux_loss_weight=config.aux_loss_weight)

    if config.separate_heads:
        from sentence_transformers.sentence_transformer.modules import Router

        return Router.for_query_document(query_modules=[head()], document_modules=[head()])
    return head()


def with_head(model: SentenceTransformer, head: nn.Module | None) -> SentenceTransformer:
    """A new pipeline with ``head`` inserted right after Pooling (before any Normalize)."""
    modules: list[nn.Module] = []
    for module in model:
        modules.append(module)
        if isinstance(module, Pooling) and head is not None:
            modules.append(head)
    return SentenceTransformer(modules=modules, device=str(model.device))


def sbmoe_heads(model: nn.Module) -> list[SBMoEHead]:
    return [m for m in model.modules() if isinstance(m, SBMoEHead)]


class RouterAuxLoss(nn.Module):
    """A ranking loss plus the auxiliary (load-balancing) losses the SB-MoE heads recorded in its forward."""

    def __init__(self, model: SentenceTransformer, base_loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.base_loss = base_loss

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        loss = self.base_loss(sentence_features, labels)
        for head in sbmoe_heads(self.model):
            aux = head.pop_aux_loss()
            if aux is not None:
                loss = loss + aux
        return loss


class TrainLogCallback(TrainerCallback):
    """Appends each log (loss, dev nDCG@10, lr) with the expert-usage entropy of every head to a JSONL file."""

    def __init__(self, model: SentenceTransformer, path: Path) -> None:
        self.model, self.path = model, path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any):
        record = {"step": state.global_step, "epoch": state.epoch, **(logs or {})}
        heads = sbmoe_heads(self.model)
        if heads and "loss" in (logs or {}):
            record["expert_usage_entropy"] = [round(h.router.usage_entropy(), 4) for h in heads]
            record["expert_usage"] = [[round(float(u), 4) for u in h.router.usage()] for h in heads]
            for head in heads:
                head.router.reset_usage()
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("step %s: %s", state.global_step, record)


def head_only_model(prefix: SentenceTransformer, head: nn.Module, data: TrainingData, config: TrainConfig,
                    normalize: bool) -> SentenceTransformer:
    """EmbeddingTable(base pooled embeddings of every text used) -> head [-> Normalize]."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    texts = sorted(set(data.anchors) | set(data.positives) | set(data.negatives) | set(data.dev_queries.values())
                   | set(data.dev_corpus.values()))
    embeddings = torch.from_numpy(encode_texts(prefix, texts, config.batch_size, config.show_progress))
    modules: list[nn.Module] = [EmbeddingTable(texts, embeddings), head]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device=str(prefix.device))


def train(config: TrainConfig) -> Path:
    """Train, keep the best dev checkpoint, and write the final sentence-transformers folder."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    if config.moe not in MOE_CHOICES:
        raise ValueError(f"unknown --moe {config.moe!r}; choose one of {', '.join(MOE_CHOICES)}")
    if config.freeze_encoder and config.moe == "none":
        raise ValueError("--freeze-encoder trains only the SB-MoE head, so it needs --moe top1|all|random")
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    set_seed(config.seed)

    base = load_encoder(EncoderConfig(model=config.model, max_length=config.max_length,
                                      batch_size=config.batch_size))
    normalize = normalizes(base)
    prefix = pooling_prefix(base)
    if Path(config.data).is_file():
        data = triples_data(Path(config.data), config.dev_fraction, config.seed)
    else:
        data = beir_data(BeirDataset.open(config.data), config.split, base, config)
    if not data.anchors:
        raise DataFormatError(f"{config.data}: no training pairs left after holding out the dev queries")

    set_seed(config.seed)  # the head's initialisation does not depend on how much mining consumed
    head = make_heads(config, prefix.get_embedding_dimension())
    trainee = head_only_model(prefix, head, data, config, normalize) if config.freeze_encoder else with_head(base, head)

    temperature = config.resolved_temperature(normalize)
    loss = RouterAuxLoss(trainee, MultipleNegativesRankingLoss(trainee, scale=1.0 / temperature,
                                                               similarity_fct=dot_score))
    evaluator = InformationRetrievalEvaluator(
        data.dev_queries, data.dev_corpus, data.dev_qrels, name="dev", ndcg_at_k=[10], mrr_at_k=[10],
        accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10], batch_size=config.batch_size,
        score_functions={"dot": dot_score}, write_csv=False, show_progress_bar=False,
    ) if data.dev_queries else None
    steps_per_epoch = max(1, len(data.anchors) // config.batch_size)
    eval_steps = config.eval_steps or steps_per_epoch
    args = SentenceTransformerTrainingArguments(
        output_dir=str(config.checkpoint_dir), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr, warmup_steps=0, seed=config.seed, data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="steps" if evaluator else "no",
        eval_steps=eval_steps, save_strategy="steps", save_steps=eval_steps, save_total_limit=2,
        load_best_model_at_end=evaluator is not None, metric_for_best_model="eval_dev_dot_ndcg@10",
        greater_is_better=True, logging_steps=max(1, min(eval_steps, 10)), report_to="none",
        disable_tqdm=not config.show_progress, use_cpu=not torch.cuda.is_available(),
        router_mapping={"anchor": "query", "positive": "document", "negative": "document"}
        if config.separate_heads else {},
    )
    callbacks: list[TrainerCallback] = [TrainLogCallback(trainee, config.checkpoint_dir / "train_log.jsonl")]
    if config.patience and evaluator is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
    train_set = Dataset.from_dict({"anchor": data.anchors, "positive": data.positives, "negative": data.negatives})
    trainer = SentenceTransformerTrainer(model=trainee, args=args, train_dataset=train_set, loss=loss,
                                         evaluator=evaluator, callbacks=callbacks)
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = any(config.checkpoint_dir.glob("checkpoint-*"))
    if resume:
        logger.warning("resuming from the last checkpoint in %s", config.checkpoint_dir)
    trainer.train(resume_from_checkpoint=True if resume else None)

    final = with_head(base, head) if config.freeze_encoder else trainee
    final.eval()
    with atomic_dir(output, overwrite=config.overwrite) as tmp:
        final.save(str(tmp))
        summary = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                   "temperature": temperature, "data": data.info,
                   "best_checkpoint": trainer.state.best_model_checkpoint, "best_dev_ndcg10": trainer.state.best_metric}
        (tmp / "sbmoe_train.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        log = config.checkpoint_dir / "train_log.jsonl"
        if log.exists():
            (tmp / "train_log.jsonl").write_text(log.read_text(encoding="utf-8"), encoding="utf-8")
    return output
