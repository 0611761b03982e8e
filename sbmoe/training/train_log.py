"""Reading a run's train_log.jsonl back: the dev curve and where a resumed run took over.

The trainer appends to one log across a kill and its resume: a header record (it holds ``recipe``) opens
each start at the step it starts from, and a resumed run replays the steps the killed run logged after its
last complete checkpoint. Readers keep the records of the run that counts: the resumed one.
"""

from __future__ import annotations

import json
from pathlib import Path

DEV_METRIC = "eval_dev_dot_ndcg@10"


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def dev_curve(log: Path) -> list[dict]:
    """Per evaluation: epoch, step, mean training loss since the evaluation before, and dev nDCG@10."""
    curve: list[dict] = []
    losses: list[float] = []
    for record in _records(log):
        if "recipe" in record:  # a (re)start: what was logged after its step is replayed from here on
            curve, losses = [c for c in curve if c["step"] <= record["step"]], []
        if "loss" in record:
            losses.append(record["loss"])
        if DEV_METRIC in record:
            curve.append({"epoch": round(record["epoch"], 3), "step": record["step"],
                          "loss": round(sum(losses) / len(losses), 5) if losses else None,
                          "dev_ndcg10": round(record[DEV_METRIC], 5)})
            losses = []
    return curve


def resumed_from_step(log: Path) -> int | None:
    """The checkpoint step the last start of the run resumed from; None for a run that started once, afresh."""
    starts = [record["step"] for record in _records(log) if "recipe" in record]
    return starts[-1] if starts and starts[-1] > 0 else None
