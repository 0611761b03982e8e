"""Run systems over datasets, score every run, and write runs, ``eval.json`` and a leaderboard."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json
from ..data import BeirDataset, DatasetNotFoundError, local_datasets
from ..runs import write_trec_run
from .metrics import DEFAULT_METRICS, evaluate_run, parse_metrics, retrieval_depth
from .report import EvalRecord, EvalReport, write_leaderboard
from .systems import SystemFn, SystemsConfig, build_systems

logger = logging.getLogger(__name__)


def system_slug(name: str) -> str:
    """A file-name-safe version of a system or model name (paths become their last part)."""
    base = Path(name).name if ("/" in name and Path(name).exists()) else name
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", base).strip("_") or "system"


def evaluate_systems(
    systems: dict[str, SystemFn],
    datasets: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    split: str | None = None,
    output_dir: Path | None = None,
    drop_self_hits: bool | None = None,
) -> EvalReport:
    """Run every system on every dataset, score the runs, and write runs + ``eval.json``.

    ``drop_self_hits`` overrides each dataset's self-hit rule (registry, or decided from its data).
    """
    metrics = list(metrics)
    parse_metrics(metrics)  # fail on a typo before any encoding
    depth = retrieval_depth(metrics)
    report = EvalReport(metrics=metrics)
    for dataset_name in datasets:
        dataset = BeirDataset.open(dataset_name, drop_self_hits=drop_self_hits)
        queries, qrels = dataset.load_split(split)
        for system, retrieve in systems.items():
            start = time.perf_counter()
            run = retrieve(dataset, queries, depth)
            seconds = time.perf_counter() - start
            run_file = None
            if output_dir is not None:
                path = Path(output_dir) / system_slug(system) / f"{dataset.name}.{split or dataset.default_split}.run"
                run_file = str(write_trec_run(run, path, tag=system_slug(system)))
            report.records.append(EvalRecord(system, dataset.name, split or dataset.default_split,
                                             evaluate_run(qrels, run, metrics), len(queries), seconds, run_file))
            logger.info("%s on %s: %s", system, dataset.name, report.records[-1].metrics)
    if output_dir is not None:
        write_json(Path(output_dir) / "eval.json", report.to_json())
    return report


@dataclass
class EvalConfig:
    """Arguments of ``sbmoe eval``: systems, datasets (``all``: every BEIR folder under the data roots),
    metrics, where results go, and a self-hit override (None: each dataset's own rule)."""

    systems: SystemsConfig = field(default_factory=SystemsConfig)
    datasets: list[str] = field(default_factory=lambda: ["scifact"])
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    split: str | None = None
    output_dir: Path = Path("results")
    drop_self_hits: bool | None = None


ALL_DATASETS = "all"


def expand_datasets(names: Sequence[str], split: str | None = None) -> list[str]:
    """``names`` with ``all`` replaced by every collection found under the data roots (in name order)."""
    expanded: list[str] = []
    for name in names:
        found = local_datasets(split) if name == ALL_DATASETS else [name]
        if not found:
            raise DatasetNotFoundError("--datasets all: no BEIR folder (corpus.jsonl and qrels) under the data "
                                       "roots; set SBMOE_DATA or put datasets in ./data")
        expanded += [n for n in found if n not in expanded]
    return expanded


def evaluate(config: EvalConfig) -> EvalReport:
    """Zero-shot evaluation: every system on every dataset; with several systems or datasets, also a
    leaderboard (leaderboard.md and leaderboard.png: the first metric per dataset per system)."""
    datasets = expand_datasets(config.datasets, config.split)
    report = evaluate_systems(build_systems(config.systems), datasets, config.metrics, config.split,
                              config.output_dir, config.drop_self_hits)
    if len(report.systems()) > 1 or len(report.datasets()) > 1:
        write_leaderboard(report, config.metrics[0], config.output_dir)
    return report
