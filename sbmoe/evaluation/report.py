"""Evaluation results: one record per (system, dataset), printed as tables and written as a leaderboard,
with per-query scores and, for several systems, paired significance tests against a baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_file, write_json
from ..version import __version__
from .significance import SignificanceReport

PER_QUERY_COLUMNS = ("system", "dataset", "query", "metric", "value")


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
    # system -> dataset -> metric -> query -> value, every judged query (0 when the run lacks it)
    per_query: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict, repr=False)
    significance: SignificanceReport | None = None
    provenance: dict = field(default_factory=dict)

    def systems(self) -> list[str]:
        return list(dict.fromkeys(r.system for r in self.records))

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.records))

    def value(self, system: str, dataset: str, metric: str) -> float | None:
        for r in self.records:
            if r.system == system and r.dataset == dataset:
                return r.metrics.get(metric)
        return None

    def std(self, system: str, dataset: str, metric: str) -> float:
        """Standard deviation over seeds (0 for a system of one seed, or without a significance report)."""
        summary = self.significance.summary(system, dataset, metric) if self.significance else None
        return summary.std if summary and summary.seeds > 1 else 0.0

    def mark(self, system: str, dataset: str, metric: str) -> str:
        return self.significance.mark(system, dataset, metric) if self.significance else ""

    def to_json(self) -> dict:
        out = {"sbmoe_version": __version__, "metrics": self.metrics, "records": [asdict(r) for r in self.records]}
        if self.significance is not None:
            out["significance"] = self.significance.to_json()
        if self.provenance:
            out["provenance"] = self.provenance
        return out


def write_per_query(report: EvalReport, path: Path) -> Path:
    """One TSV row per (system, dataset, query, metric) with full float precision, so anyone can redo the tests."""
    with atomic_file(Path(path)) as handle:
        handle.write("\t".join(PER_QUERY_COLUMNS) + "\n")
        for system, datasets in report.per_query.items():
            for dataset, metrics in datasets.items():
                for metric, values in metrics.items():
                    for qid, value in values.items():
                        handle.write(f"{system}\t{dataset}\t{qid}\t{metric}\t{value!r}\n")
    return Path(path)


def write_report(report: EvalReport, output_dir: Path, stem: str = "eval") -> None:
    """``<stem>.json`` and, when per-query scores exist, ``<stem>.per_query.tsv`` (named in the JSON)."""
    output_dir = Path(output_dir)
    if report.per_query:
        tsv = write_per_query(report, output_dir / f"{stem}.per_query.tsv")
        report.provenance.setdefault("per_query_file", str(tsv))
    write_json(output_dir / f"{stem}.json", report.to_json())


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


def _cell(value: float | None, mark: str = "", std: float = 0.0) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std else "") + mark


def _scored(report: EvalReport, system: str, dataset: str, metric: str) -> str:
    """A leaderboard cell: the mean, ± std over seeds for a seed group, and the significance marks."""
    return _cell(report.value(system, dataset, metric), report.mark(system, dataset, metric),
                 report.std(system, dataset, metric))


def format_metric_table(report: EvalReport, system: str, markdown: bool = False) -> str:
    """Datasets x metrics for one system, with a mean row."""
    rows = [[d, *(_scored(report, system, d, m) for m in report.metrics)] for d in report.datasets()]
    if len(rows) > 1:
        rows.append(["mean", *(_mean([report.value(system, d, m) for d in report.datasets()])
                               for m in report.metrics)])
    return _table(["dataset", *report.metrics], rows, markdown)


def format_leaderboard(report: EvalReport, metric: str, markdown: bool = False) -> str:
    """Datasets x systems for one metric, with a mean row."""
    systems = report.systems()
    rows = [[d, *(_scored(report, s, d, metric) for s in systems)] for d in report.datasets()]
    rows.append(["mean", *(_mean([report.value(s, d, metric) for d in report.datasets()]) for s in systems)])
    return _table([f"{metric}", *systems], rows, markdown)


def format_systems_table(report: EvalReport, dataset: str, markdown: bool = False) -> str:
    """Systems x metrics on one dataset (the table of ``sbmoe compare``)."""
    rows = [[s, *(_scored(report, s, dataset, m) for m in report.metrics)] for s in report.systems()]
    return _table([dataset, *report.metrics], rows, markdown)


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def format_significance(report: EvalReport, markdown: bool = False) -> str:
    """Every comparison with the baseline: difference, its 95% CI, raw and corrected p-values, marks."""
    sig = report.significance
    if sig is None or not sig.comparisons:
        return ""
    tests = sig.config.tests()
    header = ["system", "dataset", "metric", "Δ", "95% CI"]
    for test in tests:
        header += [f"p {test}", f"p {test} ({sig.config.correction})"]
    header.append("mark")
    rows = []
    for c in sig.comparisons:
        row = [c.system, c.dataset, c.metric, f"{c.difference:+.4f}", f"[{c.ci95[0]:+.4f}, {c.ci95[1]:+.4f}]"]
        for test in tests:
            row += [_p(c.p_values.get(test)), _p(c.p_corrected.get(test))]
        row.append(sig.mark(c.system, c.dataset, c.metric))
        rows.append(row)
    return _table(header, rows, markdown)


def legend_lines(report: EvalReport) -> list[str]:
    """The legend of the marks, to put under a marked table (none without comparisons)."""
    if report.significance is None or not report.significance.comparisons:
        return []
    return [report.significance.legend(), ""]


def write_markdown(report: EvalReport, path: Path, title: str, tables: list[str]) -> None:
    """``# title``, the tables, then (with comparisons) every test in a ``## Significance`` table."""
    detail = format_significance(report, markdown=True)
    lines = [f"# {title}", "", *tables, *(["## Significance", "", detail, ""] if detail else [])]
    with atomic_file(Path(path)) as handle:
        handle.write("\n".join(lines))


def write_leaderboard(report: EvalReport, metric: str, output_dir: Path) -> None:
    """``leaderboard.md`` (the leaderboard, one table per system, the significance legend and tests) and
    ``leaderboard.png`` (bars)."""
    output_dir = Path(output_dir)
    tables = [format_leaderboard(report, metric, markdown=True), "", *legend_lines(report)]
    for system in report.systems():
        tables += [f"## {system}", "", format_metric_table(report, system, markdown=True), ""]
    write_markdown(report, output_dir / "leaderboard.md", f"Leaderboard: {metric}", tables)

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
