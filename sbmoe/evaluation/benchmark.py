"""Run systems over datasets, score every run, and write runs, ``eval.json`` and a leaderboard."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import BeirDataset, DatasetNotFoundError, local_datasets
from ..runs import write_trec_run
from .metrics import DEFAULT_METRICS, evaluate_run, parse_metrics, per_query_table, retrieval_depth
from .provenance import dataset_files, provenance
from .report import EvalRecord, EvalReport, write_leaderboard, write_report
from .significance import SignificanceConfig, significance
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
    """Run every system on every dataset, score the runs, and write runs, ``eval.json`` (with provenance)
    and ``eval.per_query.tsv`` (every judged query's score per system, dataset and metric).

    ``drop_self_hits`` overrides each dataset's self-hit rule (registry, or decided from its data).
    """
    metrics = list(metrics)
    parse_metrics(metrics)  # fail on a typo before any encoding
    depth = retrieval_depth(metrics)
    report = EvalReport(metrics=metrics)
    data_files: dict[str, dict] = {}
    for dataset_name in datasets:
        dataset = BeirDataset.open(dataset_name, drop_self_hits=drop_self_hits)
        queries, qrels = dataset.load_split(split)
        used_split = split or dataset.default_split
        data_files[dataset.name] = {"root": str(dataset.root), "split": used_split, "sha256": dataset_files(
            dataset.root, ["corpus.jsonl", "queries.jsonl", f"qrels/{used_split}.tsv"])}
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
            report.per_query.setdefault(system, {})[dataset.name] = per_query_table(qrels, run, metrics)
            logger.info("%s on %s: %s", system, dataset.name, report.records[-1].metrics)
    report.provenance = provenance(data_files, system_provenance(systems))
    if output_dir is not None:
        write_report(report, output_dir)
    return report


def system_provenance(systems: dict[str, SystemFn]) -> dict[str, dict]:
    """Per system what can be told from it: a dense model's fingerprint, backend and device; BM25's engine."""
    out: dict[str, dict] = {}
    for name, system in systems.items():
        describe = getattr(system, "describe", None)  # a dense system; it knows its encoder without loading it
        if describe is not None:
            out[name] = describe()
        elif getattr(system, "engine", None) is not None:
            out[name] = {"engine": system.engine}  # type: ignore[attr-defined]
    return out


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
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)


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
    leaderboard (leaderboard.md and leaderboard.png: the first metric per dataset per system). With several
    systems, each is tested against the baseline per dataset and metric (``config.significance``): marks in
    the leaderboard, every p-value (raw and corrected) and effect size in eval.json."""
    datasets = expand_datasets(config.datasets, config.split)
    systems = build_systems(config.systems)
    baseline = config.significance.baseline
    if baseline is not None and baseline not in systems:
        raise ValueError(f"--baseline {baseline!r} is not one of the systems: {', '.join(systems)}")
    report = evaluate_systems(systems, datasets, config.metrics, config.split, config.output_dir,
                              config.drop_self_hits)
    if len(report.systems()) > 1:
        report.significance = significance(report.per_query, config.significance)
    report.provenance["config"] = jsonable(asdict(config))
    write_report(report, config.output_dir)
    if len(report.systems()) > 1 or len(report.datasets()) > 1:
        write_leaderboard(report, config.metrics[0], config.output_dir)
    return report


def jsonable(value: object) -> object:
    """``value`` with paths and other non-JSON leaves as strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)
