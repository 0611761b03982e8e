"""``sbmoe compare``: the leaderboard and significance tests of ``sbmoe eval`` for TREC run files from any
tool (pyserini, anserini, an earlier sbmoe run), scored against a dataset's qrels or a qrels file.

A system is one run file, or a seed group (several run files of one system trained with different seeds,
from ``--systems-from``): its table cell is then mean ± std over seeds, and its tests use each query's
score averaged over the seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import BeirDataset, DataFormatError
from ..data.beir import iter_lines
from ..runs import Run, read_trec_run
from .metrics import DEFAULT_METRICS, parse_metrics, per_query_table, retrieval_depth
from .provenance import dataset_files, file_sha256, provenance
from .report import EvalRecord, EvalReport, format_systems_table, legend_lines, write_markdown, write_report
from .significance import SignificanceConfig, seed_mean_vector, significance

Qrels = dict[str, dict[str, int]]
FUSIONS = ("rrf",)


@dataclass
class CompareConfig:
    """Arguments of ``sbmoe compare``.

    ``runs``: run files, each ``PATH`` or ``NAME=PATH``; a name defaults to the file name without its
    extension, or to the folder name when file names repeat (as in ``sbmoe eval``'s output, one folder per
    system). ``qrels``: a dataset name or BEIR folder (its ``split`` qrels, read as ``sbmoe eval`` reads
    them) or a qrels file (BEIR ``query-id corpus-id score`` TSV or TREC ``qid 0 docid rel``).
    ``systems_from``: a JSON file mapping name -> list of run files (relative to the JSON file), or a
    folder with one subfolder per system holding one run file per seed. ``fuse``: ``rrf`` adds the
    reciprocal-rank fusion of the single run files as one more system.
    """

    runs: list[str] = field(default_factory=list)
    qrels: str = "scifact"
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    split: str | None = None
    systems_from: Path | None = None
    fuse: str | None = None
    output_dir: Path | None = None
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)


def read_qrels_file(path: Path) -> Qrels:
    """A BEIR qrels TSV (optional ``query-id`` header) or a TREC qrels file; errors name the file and line."""
    qrels: Qrels = {}
    for line_no, line in iter_lines(Path(path)):
        fields = line.split("\t") if line.count("\t") == 2 else line.split()
        if line_no == 1 and fields[:1] == ["query-id"]:
            continue
        if len(fields) not in (3, 4):
            raise DataFormatError(f"{path}:{line_no}: expected 'query-id corpus-id score' or TREC "
                                  f"'qid 0 docid relevance', got {len(fields)} fields")
        qid, doc_id, score = (fields[0], fields[1], fields[2]) if len(fields) == 3 else (fields[0], fields[2],
                                                                                       fields[3])
        try:
            qrels.setdefault(qid, {})[doc_id] = int(float(score))
        except ValueError:
            raise DataFormatError(f"{path}:{line_no}: relevance {score!r} is not a number") from None
    if not qrels:
        raise DataFormatError(f"{path}: no judgements")
    return qrels


def load_qrels(spec: str, split: str | None = None) -> tuple[str, Qrels, dict]:
    """(dataset name, qrels, provenance entry) for a qrels file, or a dataset name or folder."""
    path = Path(spec)
    if path.is_file():
        name = path.parent.parent.name if path.parent.name == "qrels" else path.stem
        return name, read_qrels_file(path), {"qrels": str(path), "sha256": {path.name: file_sha256(path)}}
    dataset = BeirDataset.open(spec)
    used = split or dataset.default_split
    _, qrels = dataset.load_split(used)
    files = dataset_files(dataset.root, ["corpus.jsonl", "queries.jsonl", f"qrels/{used}.tsv"])
    return dataset.name, qrels, {"root": str(dataset.root), "split": used, "sha256": files}


def run_names(specs: list[str]) -> dict[str, Path]:
    """Name -> path for ``PATH`` / ``NAME=PATH`` arguments (names: file stems, else folder names, else paths)."""
    named = [(s.split("=", 1)[0], Path(s.split("=", 1)[1])) if "=" in s and not Path(s).exists() else (None, Path(s))
             for s in specs]
    unnamed = [p for n, p in named if n is None]
    for choose in (lambda p: p.stem, lambda p: p.parent.name, str):
        labels = [choose(p) for p in unnamed]
        if len(set(labels)) == len(labels) and all(labels):
            break
    auto = iter(labels)
    out: dict[str, Path] = {}
    for name, path in named:
        label = name if name is not None else next(auto)
        if label in out:
            raise ValueError(f"two systems are named {label!r}; name them with NAME=PATH")
        out[label] = path
    return out


def seed_groups_from(source: Path) -> dict[str, list[Path]]:
    """Name -> run files, one per seed, from a JSON mapping or a folder of per-system folders."""
    source = Path(source)
    if source.is_dir():
        groups = {d.name: sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
                  for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        groups = {name: files for name, files in groups.items() if files}
        if not groups:
            raise ValueError(f"{source}: no system folders with run files in them")
        return groups
    try:
        mapping = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataFormatError(f"{source}: expected a JSON object mapping a system name to a list of run files")
    groups = {}
    for name, files in mapping.items():
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise DataFormatError(f"{source}: system {name!r}: expected a non-empty list of run file paths")
        groups[name] = [source.parent / f for f in files]
    return groups


def compare_runs(config: CompareConfig) -> EvalReport:
    """Score every run, test every system against the baseline, and (with ``output_dir``) write
    compare.json, compare.per_query.tsv and compare.md."""
    metrics = list(config.metrics)
    parse_metrics(metrics)
    if config.fuse is not None and config.fuse not in FUSIONS:
        raise ValueError(f"unknown fusion {config.fuse!r}; choose one of {', '.join(FUSIONS)}")
    groups: dict[str, list[Path]] = {name: [path] for name, path in run_names(config.runs).items()}
    for name, files in (seed_groups_from(config.systems_from) if config.systems_from else {}).items():
        if name in groups:
            raise ValueError(f"system {name!r} is given twice (run argument and --systems-from)")
        groups[name] = files
    if not groups:
        raise ValueError("no run files: give run files or --systems-from")
    dataset, qrels, data_entry = load_qrels(config.qrels, config.split)

    runs: dict[str, list[Run]] = {name: [read_trec_run(p) for p in files] for name, files in groups.items()}
    if config.fuse:
        from ..bm25.fusion import reciprocal_rank_fusion

        singles = [r[0] for r in runs.values() if len(r) == 1]
        if len(singles) < 2:
            raise ValueError("--fuse rrf needs at least two single run files")
        runs["rrf"] = [reciprocal_rank_fusion(singles, depth=retrieval_depth(metrics))]
    baseline = config.significance.baseline
    if baseline is not None and baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not one of the systems: {', '.join(runs)}")

    tables = {name: [{dataset: per_query_table(qrels, run, metrics)} for run in seeds] for name, seeds in runs.items()}
    report = EvalReport(metrics=metrics)
    report.significance = significance(tables, config.significance, {dataset: list(qrels)})
    for name in runs:
        means = {m: report.significance.summary(name, dataset, m).mean for m in metrics}  # type: ignore[union-attr]
        files = groups.get(name, [])
        report.records.append(EvalRecord(name, dataset, config.split or "-", means, len(qrels), 0.0,
                                         ", ".join(map(str, files)) or None))
        qids = sorted(qrels)  # the seed-averaged scores the tests used
        report.per_query[name] = {dataset: {m: dict(zip(qids, seed_mean_vector(tables[name], dataset, m, qids)[0],
                                                        strict=True)) for m in metrics}}
    report.provenance = provenance({dataset: data_entry}, runs={
        name: [{"path": str(p), "sha256": file_sha256(p)} for p in files] for name, files in groups.items()},
        fused=config.fuse)
    if config.output_dir is not None:
        write_report(report, config.output_dir, stem="compare")
        write_markdown(report, Path(config.output_dir) / "compare.md", f"Comparison on {dataset}",
                       [format_systems_table(report, dataset, markdown=True), "", *legend_lines(report)])
    return report

