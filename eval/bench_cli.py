"""Start-up and latency of the command line and the Python API (issue 31): how long a user waits.

    python eval/bench_cli.py [--repeats 7] [--queries 300] [--threads 2] [--output-dir eval/results]

Measures, each in fresh processes (median and min of ``--repeats`` after one untimed warm-up run that fills
the OS file cache): ``sbmoe --help``; ``python -c "import sbmoe"`` (beside a bare ``python -c pass``, the
interpreter's own start); a warm ``sbmoe eval --model minilm --datasets scifact`` (every embedding cached
by the untimed first run, whose metrics every timed run must reproduce). Then, in this process with the model
loaded, the latency of ``Retriever.search`` with one query at a time on a SciFact HNSW index (k=10), p50 and
p95 over the 300 test queries after 20 untimed ones. Run it with nothing else on the machine.
Writes bench_cli.json and bench_cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from report import command_line, machine_line

from sbmoe.atomic import atomic_file, write_json

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]  # commands run here, so dataset names resolve as for a user in the repo
TARGETS = {"help_s": 1.0, "import_s": 1.0, "warm_eval_s": 3.0, "search_p50_ms": 15.0, "search_p95_ms": 30.0}
PACKAGES = ("torch", "transformers", "sentence-transformers", "faiss-cpu", "typer", "numpy")


def sbmoe_command() -> list[str]:
    """The installed console script, as a user runs it (``python -m sbmoe.cli`` where it is not on PATH)."""
    script = shutil.which("sbmoe")
    return [script] if script else [sys.executable, "-m", "sbmoe.cli"]


def timed_runs(command: list[str], repeats: int, env: dict[str, str], cwd: Path = ROOT) -> dict[str, object]:
    """Wall seconds of ``command`` in a fresh process: one untimed warm-up, then ``repeats`` timed runs."""
    seconds = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        if attempt:
            seconds.append(elapsed)
    return {"command": " ".join(command), "median_s": statistics.median(seconds), "min_s": min(seconds),
            "runs_s": seconds}


def eval_metrics(folder: Path) -> list[dict]:
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    return [{"system": r["system"], "dataset": r["dataset"], "metrics": r["metrics"]} for r in report["records"]]


def warm_eval(repeats: int, env: dict[str, str], work: Path, model: str, dataset: str) -> dict[str, object]:
    """Time ``sbmoe eval`` after a first run that fills the caches; every run must give the first's metrics."""
    base = [*sbmoe_command(), "eval", "--model", model, "--datasets", dataset]
    start = time.perf_counter()
    first = subprocess.run([*base, "--output-dir", str(work / "first")], capture_output=True, text=True, env=env,
                           cwd=ROOT)
    first_seconds = time.perf_counter() - start
    if first.returncode != 0:
        raise SystemExit(f"sbmoe eval failed: {first.stderr.strip()[-500:]}")
    expected = eval_metrics(work / "first")
    seconds = []
    for attempt in range(repeats + 1):
        out = work / f"warm{attempt}"
        start = time.perf_counter()
        done = subprocess.run([*base, "--output-dir", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"sbmoe eval failed: {done.stderr.strip()[-500:]}")
        if eval_metrics(out) != expected:
            raise SystemExit(f"warm eval run {attempt} gave other metrics than the first run")
        if attempt:
            seconds.append(elapsed)
    return {"command": " ".join(base), "first_run_s": first_seconds, "median_s": statistics.median(seconds),
            "min_s": min(seconds), "runs_s": seconds, "metrics": expected}


def search_latency(model: str, dataset: str, queries: int, work: Path) -> dict[str, object]:
    """Per-query latency of ``Retriever.search`` (one string at a time, k=10) on an HNSW index, model loaded."""
    import numpy as np

    from sbmoe import BeirDataset, EncoderConfig, IndexConfig, Retriever, build_index
    from sbmoe.index.faiss_index import IndexType

    index_dir = work / "hnsw"
    build_index(IndexConfig(dataset=dataset, output=index_dir, factory=IndexType("hnsw").factory(),
                            encoder=EncoderConfig(model=model), show_progress=False))
    retriever = Retriever.from_index(index_dir)
    texts = list(BeirDataset.open(dataset).load_split("test")[0].values())
    for text in texts[:20]:  # untimed: first calls allocate and tune
        retriever.search(text, k=10)
    picked = texts[:queries]
    milliseconds = []
    for text in picked:
        start = time.perf_counter()
        retriever.search(text, k=10)
        milliseconds.append((time.perf_counter() - start) * 1000)
    return {"index": retriever.index.meta.factory, "search_params": retriever.index.meta.search_params,
            "queries": len(picked), "k": 10, "p50_ms": float(np.percentile(milliseconds, 50)),
            "p95_ms": float(np.percentile(milliseconds, 95)), "mean_ms": statistics.mean(milliseconds),
            "max_ms": max(milliseconds)}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def markdown(result: dict) -> str:
    def verdict(value: float, key: str) -> str:
        return "met" if value <= TARGETS[key] else "missed"

    help_s, import_s = result["help"]["median_s"], result["import"]["median_s"]
    lines = ["# Start-up and latency of the CLI and the Python API", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
             f"Each start-up figure is the median of {result['repeats']} fresh processes after one untimed run.", "",
             "| measure | median | min | target | |", "|---|---|---|---|---|",
             f"| `python -c pass` (interpreter) | {result['python']['median_s']:.3f} s | "
             f"{result['python']['min_s']:.3f} s | | |",
             f"| `sbmoe --help` | {help_s:.3f} s | {result['help']['min_s']:.3f} s | <= {TARGETS['help_s']} s | "
             f"{verdict(help_s, 'help_s')} |",
             f"| `python -c \"import sbmoe\"` | {import_s:.3f} s | {result['import']['min_s']:.3f} s | "
             f"<= {TARGETS['import_s']} s | {verdict(import_s, 'import_s')} |"]
    if "warm_eval" in result:
        warm = result["warm_eval"]
        lines.append(f"| warm `{warm['command'].split('/')[-1]}` | {warm['median_s']:.2f} s | {warm['min_s']:.2f} s | "
                     f"<= {TARGETS['warm_eval_s']} s | {verdict(warm['median_s'], 'warm_eval_s')} |")
    if "search" in result:
        search = result["search"]
        lines.append(f"| `Retriever.search` p50 ({search['index']}, k=10) | {search['p50_ms']:.2f} ms | | "
                     f"<= {TARGETS['search_p50_ms']} ms | {verdict(search['p50_ms'], 'search_p50_ms')} |")
        lines.append(f"| `Retriever.search` p95 | {search['p95_ms']:.2f} ms | | <= {TARGETS['search_p95_ms']} ms "
                     f"| {verdict(search['p95_ms'], 'search_p95_ms')} |")
    if "warm_eval" in result:
        lines += ["", "Warm eval metrics (equal to the first, cache-filling run's): " + "; ".join(
            f"{m['system']} on {m['dataset']}: " + ", ".join(f"{k} {v:.4f}" for k, v in m["metrics"].items())
            for m in result["warm_eval"]["metrics"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="Timed fresh processes per start-up measure.")
    parser.add_argument("--queries", type=int, default=300, help="Queries timed one at a time.")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads (the issue's 2).")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--skip-eval", action="store_true", help="Leave out the warm eval.")
    parser.add_argument("--skip-search", action="store_true", help="Leave out the search latency.")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    result: dict[str, object] = {"command": command_line("eval/bench_cli.py", args), "machine": machine_line(),
                                 "cpus": os.cpu_count(), "versions": package_versions(), "repeats": args.repeats,
                                 "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        result["python"] = timed_runs([sys.executable, "-c", "pass"], args.repeats, env)
        result["help"] = timed_runs([*sbmoe_command(), "--help"], args.repeats, env)
        result["import"] = timed_runs([sys.executable, "-c", "import sbmoe"], args.repeats, env)
        if not args.skip_eval:
            result["warm_eval"] = warm_eval(args.repeats, env, work, args.model, args.dataset)
        if not args.skip_search:
            result["search"] = search_latency(args.model, args.dataset, args.queries, work)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "bench_cli.json", result)
    text = markdown(result)
    with atomic_file(args.output_dir / "bench_cli.md") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
