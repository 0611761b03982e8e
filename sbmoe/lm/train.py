"""Training loop for the MoE LM testbed: AdamW with warm-up and cosine decay, periodic validation
perplexity and routing statistics, atomic checkpoints, and exact resume after a kill.

Long runs stop early by the convergence rule (``converged``: validation perplexity improved by less than
1% over the last 20% of steps) and may be cut into chunks (``time_limit_s``: stop after the first
checkpoint past the limit; rerunning resumes exactly), so eval scripts can run them as bounded cells.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_file, corrupt_artifact, read_checkpoint
from .config import LMConfig, LMTrainConfig
from .data import LMCorpus
from .model import MoELM

CHECKPOINT = "checkpoint.pt"
TOKENIZER = "tokenizer.json"
CHECKPOINT_KIND = "an sbmoe LM checkpoint (model, config, history)"


def converged(history: list[dict[str, Any]], window: float = 0.2, tolerance: float = 0.01,
              min_steps: int = 0) -> bool:
    """True when validation PPL improved by less than ``tolerance`` (relative) over the last ``window`` of
    steps: the best PPL after step (1 - window) * S against the last PPL at or before it, S the last step."""
    if not history or history[-1]["step"] < min_steps:
        return False
    start = history[-1]["step"] * (1 - window)
    before = [h["val_ppl"] for h in history if h["step"] <= start]
    after = [h["val_ppl"] for h in history if h["step"] > start]
    if not before or not after:
        return False
    return (before[-1] - min(after)) / before[-1] < tolerance


def finished(history: list[dict[str, Any]], config: LMTrainConfig) -> bool:
    """Whether a run's history is complete: all steps done, or stopped by the convergence rule."""
    return bool(history) and (history[-1]["step"] >= config.steps or bool(history[-1].get("converged")))


def learning_rate(step: int, config: LMTrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate(model: MoELM, corpus: LMCorpus, config: LMTrainConfig) -> dict[str, Any]:
    """Validation perplexity (the corpus's held-out split, first ``eval_batches`` windows) and routing stats."""
    span = config.eval_batches * config.batch_size * model.config.seq_len + 1
    model.reset_routing_stats()
    ppl = model.perplexity(corpus.validation[:span].long(), config.batch_size)
    return {"val_ppl": ppl, **routing_summary(model, digits=4)}


def routing_summary(model: MoELM, digits: int | None = None) -> dict[str, list]:
    """Per-layer routing statistics since the last reset, as lists over layers (floats rounded if asked)."""
    stats = model.routing_stats()

    def column(values: list[float]) -> list[float]:
        return [round(v, digits) for v in values] if digits is not None else values

    return {"load_entropy": column([s.entropy for s in stats]),
            "max_over_mean_load": column([s.max_over_mean for s in stats]),
            "non_local_share": column([s.non_local_share for s in stats]),
            "distinct_combinations": [s.distinct_combinations for s in stats]}


def evaluate_final(model: MoELM, corpus: LMCorpus, batch_size: int = 16, max_tokens: int = 0) -> dict[str, Any]:
    """Perplexity on the held-out split (with its routing statistics) and on each WikiText-2 split: whole, or
    their first ``max_tokens`` tokens (a quick look at a run; the figures then say less)."""

    def head(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens[:max_tokens + 1] if max_tokens else tokens).long()

    model.reset_routing_stats()
    result: dict[str, Any] = {"val_ppl": model.perplexity(head(corpus.validation), batch_size)}
    routing = routing_summary(model)  # read before the WikiText passes add their routing
    for name, tokens in corpus.ood.items():
        result[f"{name}_ppl"] = model.perplexity(head(tokens), batch_size)
    return {**result, **routing}


class TrainedLM(NamedTuple):
    """What ``train_lm`` saved in ``output/checkpoint.pt``: one read gives the model and how it was trained."""

    model: MoELM
    history: list[dict[str, Any]]
    config: dict[str, Any]  # LMTrainConfig as stored (asdict)
    step: int | None

    @property
    def corpus(self) -> str:
        """The corpus the run trained on (runs from before the choice existed: SciFact)."""
        return self.config.get("corpus", "scifact")


def load_trained(output: Path) -> TrainedLM:
    """The model, history and config stored by ``train_lm``."""
    path = Path(output) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LM checkpoint (train one with `sbmoe lm train`)")
    state = read_checkpoint(path, CHECKPOINT_KIND, "rerun `sbmoe lm train` into this folder")
    try:
        model = MoELM(LMConfig(**state["config"]["model"]))
        model.load_state_dict(state["model"])
        return TrainedLM(model, state["history"], state["config"], state.get("step"))
    except (KeyError, TypeError, RuntimeError) as exc:  # a checkpoint of another layout or shape
        raise corrupt_artifact(path, CHECKPOINT_KIND, exc) from None


def train_lm(config: LMTrainConfig, corpus: LMCorpus) -> tuple[MoELM, list[dict[str, Any]]]:
    """Train (resuming from ``output/checkpoint.pt`` when present); returns the model and its history."""
    torch.manual_seed(config.seed)
    model = MoELM(config.model).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start = 0
    checkpoint = Path(config.output) / CHECKPOINT if config.output else None
    if checkpoint is not None and checkpoint.exists():
        rebuild = "delete it to train from step 0"
        state = read_checkpoint(checkpoint, CHECKPOINT_KIND, rebuild)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start, history = state["step"], state["history"]
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise corrupt_artifact(checkpoint, CHECKPOINT_KIND, exc, rebuild) from None
    elif config.init_from is not None:
        try:
            model.load_state_dict(load_trained(config.init_from).model.state_dict())
        except RuntimeError as error:  # shapes differ: another architecture or vocabulary
            raise ValueError(f"{Path(config.init_from) / CHECKPOINT}: its model does not fit this configuration "
                             f"({str(error).splitlines()[-1].strip()})") from None
    if history and history[-1].get("converged"):
        return model, history
    began, wall_before = time.perf_counter(), history[-1].get("wall_s", 0.0) if history else 0.0

    bar = tqdm(range(start, config.steps), desc="LM", disable=not config.show_progress, initial=start,
               total=config.steps)
    for step in bar:
        model.train()
        model.set_progress(step / config.steps)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets = (t.to(config.device) for t in corpus.batch(config.batch_size, config.model.seq_len,
                                                                      generator))
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            model.set_progress(done / config.steps)
            history.append({"step": done, "train_loss": loss.item(), **evaluate(model, corpus, config),
                            "wall_s": round(wall_before + time.perf_counter() - began, 1)})
            stop = config.stop_on_convergence and converged(history, config.convergence_window,
                                                            config.convergence_tolerance, config.min_steps)
            if stop:
                history[-1]["converged"] = True
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer, generator, done, history, config)
            if stop or (config.time_limit_s is not None and time.perf_counter() - began > config.time_limit_s):
                break
    return model, history


def save_checkpoint(path: Path, model: MoELM, optimizer, generator: torch.Generator, step: int,
                    history: list, config: LMTrainConfig) -> None:
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}  # loadable without a GPU
    state = {"model": weights, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state(), "step": step, "history": history,
             "config": {k: (asdict(v) if k == "model" else str(v) if isinstance(v, Path) else v)
                        for k, v in config.__dict__.items()}}
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def train_and_evaluate(config: LMTrainConfig) -> dict[str, Any]:
    """``sbmoe lm train``: build the corpus (tokenizer saved beside the checkpoint), train or resume, and
    return the final perplexities and routing statistics."""
    if config.output is None:
        raise ValueError("an output folder is needed for the checkpoint and tokenizer")
    tokenizer = Path(config.output) / TOKENIZER
    if config.init_from is not None and not tokenizer.is_file():  # keep the vocabulary of the starting model
        with atomic_file(tokenizer, "wb") as handle:
            handle.write((Path(config.init_from) / TOKENIZER).read_bytes())
    corpus = LMCorpus.build(vocab_size=config.model.vocab_size, tokenizer_path=tokenizer, corpus=config.corpus)
    config.model.vocab_size = corpus.vocab_size
    model, _ = train_lm(config, corpus)
    return evaluate_final(model, corpus, max_tokens=config.final_eval_tokens)


def evaluate_saved(output: Path) -> dict[str, Any]:
    """``sbmoe lm eval``: perplexities and routing statistics of a model saved by ``train_and_evaluate``."""
    trained = load_trained(output)
    tokenizer = Path(output) / TOKENIZER
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer}: not found (the model was not trained with `sbmoe lm train`)")
    return evaluate_final(trained.model, LMCorpus.build(tokenizer_path=tokenizer, corpus=trained.corpus),
                          max_tokens=int(trained.config.get("final_eval_tokens", 0)))
