"""``sbmoe train``: fine-tune an encoder with or without the SB-MoE head through sentence-transformers' trainer.

Data: a BEIR train split (positives from qrels, one hard negative per pair mined with the base encoder)
or a triples file (TSV ``query<TAB>positive<TAB>negative`` or JSONL with those keys). A seeded slice of
the training queries is held out as a dev set; its nDCG@10 drives evaluation, keep-best and early
stopping. Loss: MultipleNegativesRankingLoss (in-batch + hard negatives, or in-batch only for pairs; dot
products / temperature) plus the routers' auxiliary loss, computed over length-sorted micro-batches with the
full batch's gradients (``CachedRankingLoss``). ``--recipe paper`` sets the SB-MoE paper's settings at once.
Checkpoints go to ``<output>-checkpoints``; rerunning the same command resumes from the last complete one (a
triples stream restarts at ``global_step * global_batch``, so the data order, like the optimizer and RNG
states, continues exactly). The final model is written atomically to ``output``. Under ``torchrun`` the run is
data-parallel: ``--batch-size`` is per process, the ranking loss gathers every rank's embeddings (so it equals
the one-process loss over the global batch), and only rank 0 writes the log and the model.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.modules import Normalize, Router
from sentence_transformers.util import dot_score
from torch import nn
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

from .. import distributed
from ..atomic import atomic_dir, corrupt_artifact, is_disk_fault, write_failed
from ..data import BeirDataset, DataFormatError
from ..models.declared import declared_prompts
from ..models.encoder import EncoderConfig, load_encoder
from ..models.encoding import encode_texts
from ..models.pipeline import normalizes, pooling_prefix, set_normalize, with_head
from ..models.sbmoe_head import SBMoEHead
from .cached_loss import CachedRankingLoss
from .callbacks import RestoreRngOnResume, TrainLogCallback
from .config import TrainConfig
from .embedding_table import EmbeddingTable
from .losses import ranking_loss
from .pairs import TrainingData, beir_data, triples_data
from .train_log import DEV_METRIC

logger = logging.getLogger(__name__)

# the encoder's parameters, as the optimizer sees them through the loss: the Transformer is module 0 and
# holds the Hugging Face model as ``model`` (a head's parameters never sit under "0.model.")
ENCODER_PARAMETERS = r"(^|\.)0\.model\."


def make_heads(config: TrainConfig, dim: int) -> nn.Module | None:
    """The SB-MoE head, or an ST Router with separate query and document heads; None for ``--moe none``."""
    if config.moe == "none":
        return None

    def head() -> SBMoEHead:
        made = SBMoEHead(dim, config.experts, config.latent, mode=config.moe, gate=config.gate,
                         aux_loss_weight=config.resolved_aux_loss_weight())
        if config.freeze_router:  # the control whose routing stays at its random initialisation
            made.router.requires_grad_(False)
        return made

    if config.separate_heads:
        return Router.for_query_document(query_modules=[head()], document_modules=[head()])
    if config.head_side == "query":  # documents keep the base embedding: an existing index still serves
        return Router.for_query_document(query_modules=[head()], document_modules=[])
    return head()


def learning_rates(config: TrainConfig) -> dict[str, float]:
    """Parameter-name patterns with their own learning rate: the encoder at ``encoder_lr`` (the paper trains
    it at lr/100), a trainable router at ``router_lr_scale`` x lr; every other parameter trains at lr."""
    mapping = {}
    if config.router_trains() and config.router_lr_scale != 1.0:
        mapping[r"\.router\."] = config.lr * config.router_lr_scale
    if not config.freeze_encoder and config.resolved_encoder_lr() != config.lr:
        mapping[ENCODER_PARAMETERS] = config.resolved_encoder_lr()
    return mapping


def make_loss(config: TrainConfig, trainee: SentenceTransformer, temperature: float, world: int) -> nn.Module:
    """The ranking loss; over an encoder on one process, with length-sorted micro-batches (same gradients,
    the batch's real tokens). Data-parallel runs and head-only training take the plain step (float32 only)."""
    if config.micro_batch_tokens and world == 1 and not config.freeze_encoder:
        return CachedRankingLoss(trainee, temperature, config.micro_batch_tokens, config.precision)
    if config.precision != "fp32":
        raise ValueError(f"--precision {config.precision} needs the micro-batched step of one process; a "
                         "data-parallel run trains in fp32")
    return ranking_loss(trainee, temperature, gather=world > 1)


def config_record(config: TrainConfig) -> dict:
    """The resolved settings (recipe, then explicit options) as plain JSON values."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def head_only_model(prefix: SentenceTransformer, head: nn.Module, data: TrainingData, config: TrainConfig,
                    normalize: bool) -> SentenceTransformer:
    """EmbeddingTable(base pooled embeddings of every text used, each under its side's prompt) -> head
    [-> Normalize]. The table is keyed by prompt + text, as the trainer's collator hands texts to it."""
    prompts = declared_prompts(prefix)
    queries = sorted(set(data.anchors) | set(data.dev_queries.values()))
    documents = sorted(set(data.positives) | set(data.negatives) | set(data.dev_corpus.values()))
    parts = [encode_texts(prefix, texts, config.batch_size, config.show_progress, task=task)
             for task, texts in (("query", queries), ("document", documents))]
    texts = [prompts["query"] + t for t in queries] + [prompts["document"] + t for t in documents]
    unique = {text: row for row, text in enumerate(texts)}  # a text with no prompt on either side is one row
    rows = sorted(unique.values())
    embeddings = torch.from_numpy(np.concatenate(parts)[rows])
    modules: list[nn.Module] = [EmbeddingTable([texts[r] for r in rows], embeddings, list(prompts.values())), head]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device=str(prefix.device))


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with its trainer state (written last); a kill -9 during a save leaves an
    incomplete folder, which rank 0 removes so that the trainer does not try to resume from it."""
    complete = None
    for path in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
        if (path / "trainer_state.json").is_file():
            complete = path
        elif distributed.is_main():
            shutil.rmtree(path, ignore_errors=True)
    return complete


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a trainer checkpoint was saved at; a damaged trainer_state.json is one line."""
    path = checkpoint / "trainer_state.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["global_step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise corrupt_artifact(path, "a trainer state (JSON with global_step)", exc,
                               f"delete {checkpoint} to resume from the checkpoint before it") from None


def train(config: TrainConfig) -> Path:
    """Train, keep the best dev checkpoint (or the last step's, ``keep="last"``), and write the final
    sentence-transformers folder."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    config.validate()
    distributed.init_process_group()
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    set_seed(config.seed)

    base = load_encoder(EncoderConfig(model=config.model, max_length=config.max_length,
                                      batch_size=config.batch_size, backend="torch"))  # trained: torch weights
    if config.normalize is not None:
        set_normalize(base, config.normalize)
    normalize = normalizes(base)
    prefix = pooling_prefix(base)
    if Path(config.data).is_file():
        data = triples_data(config)
    else:
        data = beir_data(BeirDataset.open(config.data), config.split, base, config)
    if not len(data):
        raise DataFormatError(f"{config.data}: no training pairs left after holding out the dev queries")
    streaming = data.stream is not None and not config.freeze_encoder
    if not streaming:
        data.materialize()

    set_seed(config.seed)  # the head's initialisation does not depend on how much mining consumed
    head = make_heads(config, prefix.get_embedding_dimension())
    trainee = head_only_model(prefix, head, data, config, normalize) if config.freeze_encoder else with_head(base, head)

    temperature = config.resolved_temperature(normalize)
    prompts = declared_prompts(base)  # each side trains under the prompt it is encoded with at search time
    column_prompts = {column: prompts[task] for column, task in
                      (("anchor", "query"), ("positive", "document"), ("negative", "document")) if prompts[task]}
    world = distributed.world_size()
    loss = make_loss(config, trainee, temperature, world)
    evaluator = InformationRetrievalEvaluator(
        data.dev_queries, data.dev_corpus, data.dev_qrels, name="dev", ndcg_at_k=[10], mrr_at_k=[10],
        accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10], batch_size=config.batch_size,
        score_functions={"dot": dot_score}, write_csv=False, show_progress_bar=False,
        query_prompt=prompts["query"] or None, corpus_prompt=prompts["document"] or None,
    ) if data.dev_queries else None
    global_batch = config.batch_size * world
    steps_per_epoch = max(1, len(data) // global_batch)
    eval_steps = config.eval_steps or steps_per_epoch
    # by default evaluate and checkpoint at each epoch's end: the last partial batch makes an epoch one step
    # longer than len(data) // batch, and the last evaluation is then the final model's (a stream has no epochs)
    per_epoch = config.eval_steps is None and config.save_steps is None and not streaming
    max_steps = config.max_steps
    if streaming and max_steps <= 0:  # a stream has no length for the trainer to count epochs with
        max_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(config.checkpoint_dir), num_train_epochs=config.epochs, max_steps=max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr, warmup_steps=0, seed=config.seed, data_seed=config.seed,
        weight_decay=config.weight_decay, lr_scheduler_type=config.scheduler, max_grad_norm=config.max_grad_norm,
        batch_sampler=BatchSamplers.BATCH_SAMPLER if streaming else BatchSamplers.NO_DUPLICATES,
        eval_strategy=("epoch" if per_epoch else "steps") if evaluator else "no", eval_steps=eval_steps,
        save_strategy="epoch" if per_epoch else "steps",
        save_steps=config.save_steps or eval_steps, save_total_limit=2, ignore_data_skip=streaming,
        accelerator_config={"dispatch_batches": False},  # every rank reads the stream, keeps its slice
        load_best_model_at_end=evaluator is not None and config.keep == "best",
        metric_for_best_model=DEV_METRIC,
        greater_is_better=True, logging_steps=max(1, min(eval_steps, 10)), report_to="none",
        disable_tqdm=not config.show_progress,
        learning_rate_mapping=learning_rates(config), use_cpu=not torch.cuda.is_available(), prompts=column_prompts,
        router_mapping={"anchor": "query", "positive": "document", "negative": "document"}
        if config.separate_heads or (config.head_side == "query" and config.moe != "none") else {},
    )
    callbacks: list[TrainerCallback] = [TrainLogCallback(trainee, config.checkpoint_dir / "train_log.jsonl",
                                                         len(data) if streaming else None, global_batch)]
    if config.patience and evaluator is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = last_complete_checkpoint(config.checkpoint_dir)
    distributed.barrier()
    start_step = 0
    if resume is not None:
        logger.warning("resuming from %s", resume)
        start_step = checkpoint_step(resume)
    position = start_step * global_batch
    if distributed.is_main():  # the log opens with the resolved recipe, again from the step a resume starts at
        with open(config.checkpoint_dir / "train_log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": start_step, "recipe": config.recipe, "config": config_record(config),
                                     "temperature": temperature, "normalize": normalize}) + "\n")
        logger.info("training with %s", config_record(config))
    train_set = data.stream.dataset(position) if streaming else Dataset.from_dict(data.columns())
    trainer = SentenceTransformerTrainer(model=trainee, args=args, train_dataset=train_set, loss=loss,
                                         evaluator=evaluator, callbacks=callbacks)
    if streaming and resume is not None:
        trainer.add_callback(RestoreRngOnResume(trainer, resume))
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except Exception as exc:
        if not is_disk_fault(exc):
            raise
        last_complete_checkpoint(config.checkpoint_dir)  # removes the checkpoint whose save failed
        raise write_failed(config.checkpoint_dir, exc) from None
    if not distributed.is_main():
        distributed.barrier()
        return output

    final = with_head(base, head) if config.freeze_encoder else trainee
    final.similarity_fn_name = "cosine" if normalize else "dot"  # reloaded, it is scored as it was trained
    final.eval()
    with atomic_dir(output, overwrite=config.overwrite) as tmp:
        final.save(str(tmp))
        summary = {"config": config_record(config),
                   "temperature": temperature, "data": data.info,
                   "best_checkpoint": trainer.state.best_model_checkpoint, "best_dev_ndcg10": trainer.state.best_metric}
        (tmp / "sbmoe_train.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        log = config.checkpoint_dir / "train_log.jsonl"
        if log.exists():
            (tmp / "train_log.jsonl").write_text(log.read_text(encoding="utf-8"), encoding="utf-8")
    distributed.barrier()
    return output
