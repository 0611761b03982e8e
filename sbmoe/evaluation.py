"""BEIR zero-shot evaluation: retrieve with each system, score with ir-measures, print a leaderboard."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ir_measures

from . import __version__
from .atomic import atomic_file, write_json
from .data import BeirDataset
from .runs import Run, write_trec_run

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("nDCG@10", "R@100", "RR@10")


class MetricError(ValueError):
    """A metric name ir-measures does not know."""


def parse_metrics(names: Sequence[str]) -> list:
    """ir-measures measure objects for names such as ``nDCG@10``; a typo fails with the name."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name.strip()))
        except (NameError, ValueError, SyntaxError):
            raise MetricError(f"unknown metric {name!r} (examples: nDCG@10, R@100, RR@10, P@5, AP)") from None
    return measures


def retrieval_depth(metrics: Sequence[str], minimum: int = 100) -> int:
    """How many hits to retrieve so that every cutoff in ``metrics`` is covered (at least ``minimum``)."""
    cutoffs = [int(c) for name in metrics for c in re.findall(r"@(\d+)", name)]
    return max([minimum, *cutoffs])


def evaluate_run(qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the judged queries (a judged query missing from the run scores 0)."""
    measures = parse_metrics(metrics)
    values = ir_measures.calc_aggregate(measures, qrels, run)
    return {name: float(values[measure]) for name, measure in zip(metrics, measures, strict=True)}


def system_slug(name: str) -> str:
    """A file-name-safe version of a system or model name (paths become their last part)."""
    base = Path(name).name if ("/" in name and Path(name).exists()) else name
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", base).strip("_") or "system"


@dataclass
class EvalRecord:
    system: str
    dataset: str
    split: str
    metrics: dict[str, float]
    num_queries: int
    seconds: float
    run_file: str | None = None


@dataclass
class EvalReport:
    """All (system, dataset) results of one ``sbmoe eval`` call."""

    metrics: list[str]
    records: list[EvalRecord] = field(default_factory=list)

    def systems(self) -> list[str]:
        return list(dict.fromkeys(r.system for r in self.records))

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.records))

    def value(self, system: str, dataset: str, metric: str) -> float | None:
        for r in self.records:
            if r.system == system and r.dataset == dataset:
                return r.metrics.get(metric)
        return None

    def to_json(self) -> dict:
        return {"sbmoe_version": __version__, "metrics": self.metrics,
                "records": [asdict(r) for r in self.records]}


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths, strict=True)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _mean(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{sum(present) / len(present):.4f}" if present and len(present) == len(values) else "-"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_metric_table(report: EvalReport, system: str, markdown: bool = False) -> str:
    """Datasets x metrics for one system, with a mean row."""
    rows = [[d, *(_cell(report.value(system, d, m)) for m in report.metrics)] for d in report.datasets()]
    if len(rows) > 1:
        rows.append(["mean", *(_mean([report.value(system, d, m) for d in report.datasets()])
                               for m in report.metrics)])
    return _table(["dataset", *report.metrics], rows, markdown)


def format_leaderboard(report: EvalReport, metric: str, markdown: bool = False) -> str:
    """Datasets x systems for one metric, with a mean row."""
    systems = report.systems()
    rows = [[d, *(_cell(report.value(s, d, metric)) for s in systems)] for d in report.datasets()]
    rows.append(["mean", *(_mean([report.value(s, d, metric) for d in report.datasets()]) for s in systems)])
    return _table([f"{metric}", *systems], rows, markdown)


# A system retrieves: (dataset, queries, k) -> run.
SystemFn = Callable[[BeirDataset, dict[str, str], int], Run]


def evaluate_systems(
    systems: dict[str, SystemFn],
    datasets: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    split: str | None = None,
    output_dir: Path | None = None,
) -> EvalReport:
    """Run every system on every dataset, score the runs, and write runs + ``eval.json``."""
    metrics = list(metrics)
    parse_metrics(metrics)  # fail on a typo before any encoding
    depth = retrieval_depth(metrics)
    report = EvalReport(metrics=metrics)
    for dataset_name in datasets:
        dataset = BeirDataset.open(dataset_name)
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


def write_leaderboard(report: EvalReport, metric: str, output_dir: Path) -> None:
    """``leaderboard.md`` (the leaderboard and one table per system) and ``leaderboard.png`` (bars)."""
    output_dir = Path(output_dir)
    parts = [f"# Leaderboard: {metric}", "", format_leaderboard(report, metric, markdown=True), ""]
    for system in report.systems():
        parts += [f"## {system}", "", format_metric_table(report, system, markdown=True), ""]
    with atomic_file(output_dir / "leaderboard.md") as handle:
        handle.write("\n".join(parts))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems, datasets = report.systems(), report.datasets()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(datasets) * len(systems) ** 0.5), 3.6))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        values = [report.value(system, d, metric) or 0.0 for d in datasets]
        ax.bar([x + i * width for x in range(len(datasets))], values, width, label=system)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(datasets))], datasets)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(output_dir / "leaderboard.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
