"""Trainer callbacks: the JSONL training log with expert-usage statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from ..models.pipeline import sbmoe_heads

logger = logging.getLogger(__name__)


class TrainLogCallback(TrainerCallback):
    """Appends each log (loss, dev nDCG@10, lr) with the expert-usage entropy of every head to a JSONL file.

    A stream has no length for the trainer to count epochs by (it counts from where a resume starts), so a
    streamed run gives ``stream_rows`` (rows in an epoch) and ``rows_per_step`` and logs epochs counted here.
    """

    def __init__(self, model: SentenceTransformer, path: Path, stream_rows: int | None = None,
                 rows_per_step: int = 1) -> None:
        self.model, self.path = model, path
        self.stream_rows, self.rows_per_step = stream_rows, rows_per_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any):
        epoch = state.epoch if self.stream_rows is None else state.global_step * self.rows_per_step / self.stream_rows
        record = {"step": state.global_step, "epoch": epoch,
                  **{key: value for key, value in (logs or {}).items() if key != "epoch"}}
        heads = sbmoe_heads(self.model)
        if heads and "loss" in (logs or {}):
            record["expert_usage_entropy"] = [round(h.router.usage_entropy(), 4) for h in heads]
            record["expert_usage"] = [[round(float(u), 4) for u in h.router.usage()] for h in heads]
            for head in heads:
                head.router.reset_usage()
        if not state.is_world_process_zero:  # data-parallel: one log, written by rank 0
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("step %s: %s", state.global_step, record)


class RestoreRngOnResume(TrainerCallback):
    """Restores a checkpoint's RNG states just before the first resumed step.

    The trainer restores them itself only when it replays the skipped batches; a stream that restarts at a
    row offset (``ignore_data_skip``) needs them restored here, after the data iterator exists, so that
    dropout and router noise continue exactly as in an uninterrupted run.
    """

    def __init__(self, trainer: Any, checkpoint: Path) -> None:
        self.trainer, self.checkpoint = trainer, checkpoint

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if self.checkpoint is not None:
            self.trainer._load_rng_state(str(self.checkpoint))
            self.checkpoint = None
