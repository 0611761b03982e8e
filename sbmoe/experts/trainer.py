"""``sbmoe expert train``: a query-side expert on one dataset (or the union of several), against fixed base-model
document embeddings.

The documents never pass through the encoder here, so sentence-transformers' trainer (built to encode every
column) has nothing to do; this is a plain loop. Loss: softmax cross-entropy of each query over the batch's
positives (in-batch negatives) and mined hard negatives, under the similarity the base model declares (cosine
scores / 0.05 for cosine models, raw dot products for dot); a batch's duplicate positives (SQuAD questions share
paragraphs) are masked rather than counted as negatives. Each epoch ends with dev nDCG@10; the adapter of each
epoch is kept in ``<output>-checkpoints/epoch-N`` and the best one is saved. ``resume/`` (adapter, optimizer,
position) is written every ``save_steps`` steps and at each epoch's end; a rerun continues from it, batch for batch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from ..atomic import atomic_dir, write_json
from ..evaluation.metrics import evaluate_run
from ..index.similarity import prepare_vectors
from ..models.declared import declared_prompts, declared_similarity, task_prompt
from ..models.encoder import EncoderConfig, load_encoder
from ..models.encoding import encode_texts
from ..models.fingerprint import model_fingerprint
from .adapters import EXPERT_FILE, PooledAdapter, add_lora, save_lora
from .config import ExpertConfig
from .data import ExpertData, base_query_vectors, build_expert_data

logger = logging.getLogger(__name__)
STATE_FILE = "state.json"  # written last: marks an epoch checkpoint complete


def temperature_for(config: ExpertConfig, similarity: str) -> float:
    if config.temperature is not None:
        return config.temperature
    return 0.05 if similarity == "cosine" else 1.0


def batch_loss(queries: torch.Tensor, documents: torch.Tensor, positives: np.ndarray, negatives: np.ndarray,
               temperature: float) -> torch.Tensor:
    """Cross-entropy of query i over [the batch's positives; its mined negatives], positive i the target. Columns
    that hold query i's own positive document under another index (a shared paragraph) are masked."""
    columns = np.concatenate([positives, negatives[negatives >= 0]])
    candidates = documents[torch.from_numpy(columns)]
    scores = queries @ candidates.T / temperature
    same = torch.from_numpy(columns[None, :] == positives[:, None])
    same[torch.arange(len(positives)), torch.arange(len(positives))] = False
    scores = scores.masked_fill(same, float("-inf"))
    return F.cross_entropy(scores, torch.arange(len(positives)))


def query_batch(model: SentenceTransformer, texts: list[str], max_length: int) -> dict:
    """Tokenized queries with the model's query prompt, as ``encode_texts`` would feed them."""
    prompt = task_prompt(model, "query")
    encoded = model.tokenizer([prompt + t for t in texts], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
    return {"modality": "text", **encoded}


def dev_ndcg(encode, data: ExpertData, similarity: str) -> float:
    """Mean over datasets of dev nDCG@10, each dev query ranked over its own dataset's corpus."""
    scores = []
    for corpus in data.corpora:
        queries, qrels = data.dev[corpus.name]
        if not queries:
            continue
        qids = list(queries)
        vectors = prepare_vectors(encode([queries[q] for q in qids]), similarity)
        sims = vectors @ corpus.vectors.T
        top = np.argsort(-sims, axis=1)[:, :10]
        run = {q: {corpus.doc_ids[r]: float(sims[i, r]) for r in top[i]} for i, q in enumerate(qids)}
        scores.append(evaluate_run(qrels, run, ["nDCG@10"])["nDCG@10"])
    return float(np.mean(scores)) if scores else math.nan


class ExpertIncomplete(RuntimeError):
    """Training stopped at a checkpoint because ``max_minutes`` ran out; rerunning the same call resumes."""


def save_checkpoint(step: ExpertStep, optimizer, scheduler, state: dict, folder: Path) -> None:
    """Adapter, optimizer and state into ``folder``, written beside it and renamed (state.json marks it whole)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    step.save(partial)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, partial / "optimizer.pt")
    write_json(partial / STATE_FILE, state)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


class ExpertStep:
    """What one kind of expert trains and how it encodes queries (with gradients in training)."""

    def __init__(self, base: SentenceTransformer, config: ExpertConfig, data: ExpertData, similarity: str) -> None:
        self.base, self.config, self.similarity = base, config, similarity
        name = config.expert_name
        if config.kind == "lora":
            self.params = add_lora(base[0].auto_model, name, config.rank, config.alpha, config.dropout,
                                   config.targets)
        else:
            self.adapter = PooledAdapter(base.get_embedding_dimension(), config.rank)
            self.params = list(self.adapter.parameters())
            unique = sorted(set(data.queries))
            vectors = base_query_vectors(base, {str(i): t for i, t in enumerate(unique)}, config.batch_size, None)
            self.row_of = {t: i for i, t in enumerate(unique)}
            self.table = torch.from_numpy(np.asarray(vectors, dtype=np.float32))

    def train_vectors(self, texts: list[str]) -> torch.Tensor:
        if self.config.kind == "lora":
            self.base.train()
            out = self.base(query_batch(self.base, texts, self.config.max_query_length))["sentence_embedding"]
        else:
            out = self.adapter(self.table[[self.row_of[t] for t in texts]])
        return F.normalize(out, dim=-1) if self.similarity == "cosine" else out

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        self.base.eval()
        if self.config.kind == "lora":
            return encode_texts(self.base, texts, self.config.batch_size, task="query")
        raw = torch.from_numpy(encode_texts(self.base, texts, self.config.batch_size, task="query"))
        return self.adapter(raw).numpy()

    def save(self, folder: Path) -> None:
        if self.config.kind == "lora":
            save_lora(self.base[0].auto_model, self.config.expert_name, folder)
        else:
            self.adapter.save(folder)

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        if self.config.kind == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.base[0].auto_model, load_file(str(folder / "adapter_model.safetensors")),
                                      adapter_name=self.config.expert_name)
        else:
            self.adapter.load_state_dict(PooledAdapter.load(folder).state_dict())


def train_expert(config: ExpertConfig, base: SentenceTransformer | None = None) -> Path:
    """Train, keep the best dev epoch, and write the expert folder (adapter files + expert.json) atomically."""
    config.validate()
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    base = base if base is not None else load_encoder(EncoderConfig(model=config.model, batch_size=config.batch_size,
                                                                    backend="torch"))  # the adapters train on it
    similarity = declared_similarity(base)
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"model {config.model} declares similarity_fn_name {similarity!r}; a query expert trains "
                         "under cosine or dot")
    base_fingerprint = model_fingerprint(base)  # before any adapter is added: the document side's fingerprint
    temperature = temperature_for(config, similarity)
    data = build_expert_data(base, config.data, config.split, config.negatives, config.mine_depth,
                             config.max_queries, config.dev_queries, config.seed, config.batch_size,
                             config.show_progress)
    documents = torch.from_numpy(np.ascontiguousarray(data.documents))
    torch.manual_seed(config.seed)
    step = ExpertStep(base, config, data, similarity)
    optimizer = torch.optim.AdamW(step.params, lr=config.lr, weight_decay=0.0)
    steps_per_epoch = max(1, len(data) // config.batch_size)  # the last partial batch is dropped
    total = config.max_steps or steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total, 1)))
    checkpoints = config.checkpoint_dir
    checkpoints.mkdir(parents=True, exist_ok=True)
    resume = checkpoints / "resume"
    if not (resume / STATE_FILE).is_file():
        state = {"epoch": 0, "step": 0, "batch": 0, "dev": [step_dev(step, data, similarity)], "seconds": 0.0}
        step.save(checkpoints / "epoch-0")  # the untrained expert (the base model): kept if no epoch beats it
    else:
        logger.warning("resuming expert %s after %s", config.expert_name, resume)
        state = json.loads((resume / STATE_FILE).read_text(encoding="utf-8"))
        step.load(resume)
        saved = torch.load(resume / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    budget_start = time.perf_counter()
    while state["epoch"] < config.epochs and (not config.max_steps or state["step"] < config.max_steps):
        epoch = state["epoch"] + 1
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
        batches = [order[i:i + config.batch_size] for i in range(0, steps_per_epoch * config.batch_size,
                                                                   config.batch_size)]
        losses = state.pop("epoch_losses", [])
        bar = tqdm(total=len(batches), initial=state["batch"], desc=f"{config.expert_name} epoch {epoch}",
                   disable=not config.show_progress)
        started = time.perf_counter()
        for number in range(state["batch"], len(batches)):
            if config.max_steps and state["step"] >= config.max_steps:
                break
            torch.manual_seed(config.seed * 1_000_003 + state["step"])  # LoRA dropout: the same after a resume
            rows = batches[number]
            vectors = step.train_vectors([data.queries[r] for r in rows])
            loss = batch_loss(vectors, documents, data.positives[rows], data.negatives[rows], temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            state["step"] += 1
            state["batch"] = number + 1
            bar.update(1)
            if state["batch"] % config.save_steps == 0 and state["batch"] < len(batches):
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                save_checkpoint(step, optimizer, scheduler, {**state, "epoch_losses": losses}, resume)
                if config.max_minutes and time.perf_counter() - budget_start > config.max_minutes * 60:
                    raise ExpertIncomplete(f"{config.expert_name}: stopped at step {state['step']} after "
                                           f"{config.max_minutes:g} min; rerun to resume")
        bar.close()
        state["epoch"], state["batch"] = epoch, 0
        state["seconds"] += time.perf_counter() - started
        state["dev"].append(step_dev(step, data, similarity))
        state.setdefault("loss", []).append(float(np.mean(losses)) if losses else math.nan)
        step.save(checkpoints / f"epoch-{epoch}")
        save_checkpoint(step, optimizer, scheduler, state, resume)
        if config.max_minutes and time.perf_counter() - budget_start > config.max_minutes * 60 \
                and state["epoch"] < config.epochs:
            raise ExpertIncomplete(f"{config.expert_name}: stopped after epoch {epoch} ({config.max_minutes:g} min); "
                                   "rerun to resume")
    best = int(np.argmax(state["dev"]))  # 0: the untrained expert (the base model) was best on dev
    record = {"kind": config.kind, "name": config.expert_name, "base_model": config.model,
              "base_fingerprint": base_fingerprint, "similarity": similarity, "prompts": declared_prompts(base),
              "temperature": temperature, "split": config.split,
              "datasets": [str(Path(d).resolve()) if Path(d).is_dir() else d for d in config.data],
              "pairs": len(data), "steps": state["step"], "train_seconds": round(state["seconds"], 1),
              "dev_ndcg10": state["dev"], "loss": state.get("loss", []), "best_epoch": best,
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}
    with atomic_dir(output, overwrite=config.overwrite) as tmp:
        for path in (checkpoints / f"epoch-{best}").iterdir():
            shutil.copy2(path, tmp / path.name)
        (tmp / EXPERT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(checkpoints, ignore_errors=True)
    return output


def step_dev(step: ExpertStep, data: ExpertData, similarity: str) -> float:
    return round(dev_ndcg(step.encode, data, similarity), 5)
