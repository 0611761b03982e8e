"""Evaluation results: one record per (system, dataset), printed as tables and written as a leaderboard."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..atomic import atomic_file


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
