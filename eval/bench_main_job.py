"""The main job side by side, in one run on one machine: BEIR's own pipeline, sentence-transformers' own
backends and sbmoe's, each cold and warm (issue 56).

    python eval/bench_main_job.py [--runs beir,sbmoe-auto,...] [--datasets scifact,queries:squad]
                                  [--modes cold,warm] [--threads N] [--batch-size 64] [--limit N]
                                  [--out eval/results/bench_main_job.json] [--force] [--timeout 3600]

Runs (all-MiniLM-L6-v2, exact search, nDCG@10 by ir-measures for every run):

- ``beir``: BEIR's pipeline as its README runs it: ``models.SentenceBERT`` + ``DenseRetrievalExactSearch``
  (cosine) + ``EvaluateRetrieval`` (its own nDCG@10 is recorded beside ours).
- ``st-onnx``, ``st-openvino``, ``st-onnx-int8``: sentence-transformers' own ``backend="onnx"``,
  ``backend="openvino"`` and its dynamic int8 export (``export_dynamic_quantized_onnx_model``, avx512_vnni),
  in the same exact search. They need Optimum; where it is not installed, the run records why instead of failing.
- ``sbmoe-auto`` (the README command, ``sbmoe eval --model minilm --datasets D``: the default backend),
  ``sbmoe-torch``, ``sbmoe-onnx``, ``sbmoe-onnx-int8`` (``--backend``).

Datasets: BEIR names or folders (the whole job: encode, search, evaluate), and ``queries:NAME``: the test query
texts of NAME encoded as a corpus (short texts: speed only, no nDCG; ``queries:squad``, the default, is 10,570
questions of about a dozen tokens).

Modes: ``cold``, a fresh process and, for sbmoe, an empty ``SBMOE_CACHE`` (the export of an ONNX graph included);
``warm``, the same command again on the cache the cold run left, timed as the ``sbmoe`` console script alone
(BEIR and sentence-transformers cache nothing: they run cold only). Per run: wall time of the process, peak RSS of the
job's own process and of its whole process tree (sbmoe's export children included), user and system CPU and minor page
faults of the tree, the corpus encode time and docs/s (measured inside the job, around the corpus encode),
nDCG@10. Every finished run is written to ``--out`` at once and a rerun skips it (``--force`` redoes it), so a
killed benchmark resumes. ``--limit N`` keeps the first N documents of each corpus (smoke runs: write to a
temporary ``--out``, never to eval/results). Time it alone on the machine: a shared CPU times nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "minilm"
SBMOE_RUNS = {"sbmoe-auto": None, "sbmoe-torch": "torch", "sbmoe-onnx": "onnx", "sbmoe-onnx-int8": "onnx-int8",
              "sbmoe-torch-bf16": "torch-bf16"}
ST_RUNS = {"st-onnx": "onnx", "st-openvino": "openvino", "st-onnx-int8": "onnx"}
RUNS = ("beir", *ST_RUNS, *SBMOE_RUNS)
MODES = ("cold", "warm")
PACKAGES = ("sbmoe", "torch", "sentence-transformers", "transformers", "onnxruntime", "onnx", "beir", "optimum",
            "optimum-onnx", "optimum-intel", "openvino", "numpy", "faiss-cpu")
QUERIES_PREFIX = "queries:"
BACKEND_ENV = "SBMOE_BACKEND"  # what sbmoe's auto stands for where set (models/backend_choice.py)


class Unavailable(Exception):
    """A run that cannot be made on this machine (a missing extra): recorded with its reason, not failed."""


# --- inside a run's own process ---------------------------------------------------------------------------


def minilm() -> str:
    from sbmoe.models.light_encoders import minilm_path

    return minilm_path()


def timed(record: dict, key: str, func: Callable) -> Callable:
    """``func`` that adds its wall seconds to ``record[key]``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            record[key] = record.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def ndcg10(qrels: dict, run: dict) -> float:
    from sbmoe.evaluation.metrics import evaluate_run

    return round(evaluate_run(qrels, run, ["nDCG@10"])["nDCG@10"], 4)


def load_beir_folder(folder: str) -> tuple[dict, dict, dict]:
    from beir.datasets.data_loader import GenericDataLoader

    return GenericDataLoader(data_folder=folder).load(split="test")


def beir_run(folder: str, args: argparse.Namespace, record: dict) -> None:
    """BEIR's own pipeline, as its README runs a dense model."""
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = load_beir_folder(folder)
    encoder = models.SentenceBERT(minilm())
    encoder.encode_corpus = timed(record, "encode_s", encoder.encode_corpus)
    search = DenseRetrievalExactSearch(encoder, batch_size=args.batch_size)
    retriever = EvaluateRetrieval(search, score_function="cos_sim")
    results = retriever.retrieve(corpus, queries)
    ndcg, *_ = retriever.evaluate(qrels, results, [10])
    record.update(documents=len(corpus), ndcg10=ndcg10(qrels, results), beir_ndcg10=round(ndcg["NDCG@10"], 4))


def st_model(run: str, threads: int):
    """sentence-transformers' own backend for ``run``; Unavailable with the library's reason where it cannot."""
    from sentence_transformers import SentenceTransformer

    path, backend = minilm(), ST_RUNS[run]
    try:
        if run != "st-onnx-int8":
            return SentenceTransformer(path, device="cpu", backend=backend)
        from sentence_transformers import export_dynamic_quantized_onnx_model

        work = Path(tempfile.mkdtemp(prefix="st-int8-"))
        model = SentenceTransformer(path, device="cpu", backend="onnx")
        model.save(str(work))
        export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(work))
        return SentenceTransformer(str(work), device="cpu", backend="onnx",
                                   model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
    except Exception as exc:  # ImportError (no Optimum), or whatever the backend raises
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"sentence-transformers backend={backend!r}: {type(exc).__name__}: {reason}") from None


def st_run(run: str, folder: str, args: argparse.Namespace, record: dict) -> None:
    """A sentence-transformers backend in the same exact search sbmoe uses (FAISS inner product, top 100)."""
    import numpy as np

    from sbmoe.data import BeirDataset
    from sbmoe.index.faiss_index import DenseIndex, IndexMeta

    model = st_model(run, args.threads)
    dataset = BeirDataset.open(folder)
    docs = list(dataset.iter_corpus())
    queries, qrels = dataset.load_split()
    encode = timed(record, "encode_s", model.encode_document)
    embeddings = np.asarray(encode([d.as_text() for d in docs], batch_size=args.batch_size), dtype=np.float32)
    meta = IndexMeta(model=run, model_fingerprint=run, pooling="mean", dim=embeddings.shape[1], normalize=True,
                     count=0, similarity="cosine")  # BEIR's cos_sim
    index = DenseIndex.from_embeddings(embeddings, [d.doc_id for d in docs], meta)
    qids = list(queries)
    vectors = np.asarray(model.encode_query([queries[q] for q in qids], batch_size=args.batch_size), np.float32)
    run_ = index.run(qids, vectors, 100, drop_self_hits=dataset.drop_self_hits)
    record.update(documents=len(docs), ndcg10=ndcg10(qrels, run_))


def time_corpus_encoding(record: dict) -> None:
    """Wrap sbmoe's ``encode_corpus`` in a timer when the job first imports it: importing it here would load torch
    into a warm run, which never encodes and never imports it."""
    import importlib.abc
    import importlib.util

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 - the finder protocol
            if name != "sbmoe.models.encoding":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            load = spec.loader.exec_module

            def exec_module(module) -> None:  # noqa: ANN001
                load(module)
                module.encode_corpus = timed(record, "encode_s", module.encode_corpus)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())


def sbmoe_run(run: str, folder: str, args: argparse.Namespace, record: dict) -> None:
    """The sbmoe command, in this process as its console script runs it (only the corpus encode is wrapped in a
    timer)."""
    from sbmoe.cli import app

    time_corpus_encoding(record)
    out = Path(tempfile.mkdtemp(prefix="sbmoe-eval-"))
    app(eval_arguments(run, folder, out), standalone_mode=False)
    record.update(run_outcome(out, folder))


def short_texts_run(run: str, name: str, args: argparse.Namespace, record: dict) -> None:
    """Encode-only: the query texts of a dataset as a corpus, through the run's encoder."""
    from sbmoe.data import BeirDataset

    dataset = BeirDataset.open(name)
    queries, _ = dataset.load_split()
    texts = list(queries.values())
    if run == "beir":
        from beir.retrieval import models

        encoder = models.SentenceBERT(minilm())
        encode = lambda: encoder.encode_corpus([{"title": "", "text": t} for t in texts],  # noqa: E731
                                               batch_size=args.batch_size)
    elif run in ST_RUNS:
        model = st_model(run, args.threads)
        encode = lambda: model.encode_document(texts, batch_size=args.batch_size)  # noqa: E731
    else:
        from sbmoe.models.encoder import EncoderConfig, load_encoder, set_threads
        from sbmoe.models.encoding import encode_texts
        from sbmoe.models.onnx_backend import backend_of

        set_threads(args.threads)
        model = load_encoder(EncoderConfig(model=MODEL, backend=SBMOE_RUNS[run] or "auto"))
        record["backend"] = backend_of(model)
        encode = lambda: encode_texts(model, texts, args.batch_size, task="document")  # noqa: E731
    timed(record, "encode_s", encode)()
    record.update(documents=len(texts), ndcg10=None)


def run_cell(spec: dict) -> dict:
    """One run in this process; its record (or the reason it cannot run) goes to ``spec["out"]``."""
    args = argparse.Namespace(**spec["args"])
    record: dict = {}
    if spec["run"] not in SBMOE_RUNS:  # sbmoe's runs take the command's default (all cores, OMP_NUM_THREADS)
        import torch

        torch.set_num_threads(args.threads)
    try:
        if spec["folder"].startswith(QUERIES_PREFIX):
            short_texts_run(spec["run"], spec["folder"][len(QUERIES_PREFIX):], args, record)
        elif spec["run"] == "beir":
            beir_run(spec["folder"], args, record)
        elif spec["run"] in ST_RUNS:
            st_run(spec["run"], spec["folder"], args, record)
        else:
            sbmoe_run(spec["run"], spec["folder"], args, record)
    except Unavailable as exc:
        record["unavailable"] = str(exc)
    if record.get("encode_s") and record.get("documents"):
        record["docs_per_s"] = round(record["documents"] / record["encode_s"], 2)
    record["job_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(spec["out"]).write_text(json.dumps(record), encoding="utf-8")
    return record


# --- the orchestrator ------------------------------------------------------------------------------------


def eval_arguments(run: str, folder: str, out: Path) -> list[str]:
    """``sbmoe eval``'s arguments for an sbmoe run: the README command as it stands (default batch size, metrics and
    threads: ``--threads`` alone would import torch into a warm run), with ``--backend`` for the explicit ones."""
    backend = SBMOE_RUNS[run]
    return (["eval", "--model", MODEL, "--datasets", folder, "--output-dir", str(out)]
            + (["--backend", backend] if backend else []))


def cli_command(run: str, folder: str, out: Path) -> list[str]:
    """The console script a user runs (a warm run is timed as that command alone, not inside this harness)."""
    script = shutil.which("sbmoe")
    head = [script] if script else [sys.executable, "-c", "from sbmoe.cli import app; app()"]
    return head + eval_arguments(run, folder, out)


def run_outcome(out: Path, folder: str) -> dict:
    """nDCG@10, backend and corpus size from the report an sbmoe run wrote into ``out``."""
    from sbmoe.data import BeirDataset

    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    models = report["provenance"]["models"]
    return {"ndcg10": round(report["records"][0]["metrics"]["nDCG@10"], 4),
            "backend": next(iter(models.values())).get("backend"), "documents": BeirDataset.open(folder).corpus_size()}


def measured(command: list[str], env: dict, timeout: float) -> dict:
    """Run ``command``; its wall time and, from wait4, its process tree's rusage (peak RSS of the largest process,
    user and system CPU, minor faults)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group: a timeout kills its children too
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL) if process.poll() is None
                            else None)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    timer.start()
    reader.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "exit": process.returncode, "tree_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "user_s": round(usage.ru_utime, 2), "system_s": round(usage.ru_stime, 2), "minor_faults": usage.ru_minflt,
            "stderr_tail": [line.rstrip() for line in stderr_lines[-5:]]}


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f.startswith(("avx512", "amx", "avx_vnni", "avx2")))


def machine(threads: int) -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": model_name, "cores": os.cpu_count(), "threads": threads, "cpu_flags": cpu_flags(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "model": f"{MODEL} (all-MiniLM-L6-v2, {minilm()})"}


def folders(datasets: list[str], limit: int | None, work: Path) -> dict[str, str]:
    """Each dataset's folder (a slice of its first ``limit`` documents with ``--limit``); queries sets as named."""
    from bench_encode import limited_dataset

    from sbmoe.data import BeirDataset

    out = {}
    for name in datasets:
        short = name.startswith(QUERIES_PREFIX)
        source = name[len(QUERIES_PREFIX):] if short else name
        dataset = limited_dataset(source, limit, work / name.replace(":", "-")) if limit else BeirDataset.open(source)
        out[name] = f"{QUERIES_PREFIX}{dataset.root}" if short else str(dataset.root)
    return out


def table(results: dict, runs: list[str], datasets: list[str], modes: list[str]) -> list[str]:
    """Markdown rows per dataset: every run and mode, wall time as a ratio of BEIR's cold run."""
    lines = []
    for dataset in datasets:
        base = results.get(f"beir/{dataset}/cold", {}).get("wall_s")
        lines += [f"\n### {dataset}\n",
                  "| run | mode | wall s | x BEIR | peak RSS MB (job / tree) | user s | system s | sys/user "
                  "| minor faults | docs/s | nDCG@10 | backend | measured |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for run in runs:
            for mode in modes:
                cell = results.get(f"{run}/{dataset}/{mode}")
                if cell is None:
                    continue
                if "unavailable" in cell or "failed" in cell:
                    why = cell.get("unavailable", "").split(". ")[0][:160] or f"failed, {cell['failed'][-160:]}"
                    lines.append(f"| {run} | {mode} | unavailable: {why} |" + " |" * 9 + f" {cell.get('at', '-')} |")
                    continue
                if mode == "warm" and run in SBMOE_RUNS and not cell.get("timed"):
                    mode = "warm (in the harness)"  # a cell from before warm runs were timed as the CLI alone
                ratio = f"{cell['wall_s'] / base:.2f}" if base and cell.get("wall_s") else "-"
                share = f"{cell['system_s'] / cell['user_s']:.0%}" if cell.get("user_s") else "-"
                lines.append(f"| {run} | {mode} | {cell.get('wall_s', '-')} | {ratio} | "
                             f"{cell.get('job_peak_rss_mb', '-')} / {cell.get('tree_peak_rss_mb', '-')} | "
                             f"{cell.get('user_s', '-')} | {cell.get('system_s', '-')} | {share} | "
                             f"{cell.get('minor_faults', 0):,} | {cell.get('docs_per_s', '-')} | "
                             f"{cell.get('ndcg10') if cell.get('ndcg10') is not None else '-'} | "
                             f"{cell.get('backend', '-')} | {cell.get('at', '-')} |")
    return lines


def write_markdown(path: Path, results: dict, runs: list[str], datasets: list[str], modes: list[str]) -> None:
    from sbmoe.atomic import atomic_file

    info = results["machine"]
    head = [f"# The main job side by side ({info['cpu']}, {info['threads']} threads)", "",
            "Written by `eval/bench_main_job.py` (how each run is made and measured: its docstring). Wall time "
            "includes starting Python and loading the model; x BEIR is the ratio to BEIR's cold run on the same "
            "dataset; peak RSS of the job's process and of its whole process tree (sbmoe's export children); CPU "
            "and page faults of the tree; docs/s of the corpus encode alone; measured: when the run ended (compare "
            "ratios within one sitting: the setup lists them). A warm sbmoe run is the `sbmoe` "
            "console script alone; `warm (in the harness)` marks one timed inside the benchmark's own process "
            "(Python, its imports and the timers add about 1.5 s).", "",
            f"CPU flags: {', '.join(info['cpu_flags']) or 'none found'}  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v) + "  ",
            f"Setup: {json.dumps(results['setup'])}"]
    with atomic_file(path) as handle:
        handle.write("\n".join(head + table(results["runs"], runs, datasets, modes)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Comma-separated, of: {', '.join(RUNS)}.")
    parser.add_argument("--datasets", default="scifact,queries:squad",
                        help="BEIR names or folders, and queries:NAME (short texts, speed only).")
    parser.add_argument("--modes", default=",".join(MODES), help="cold, warm or both.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: all cores).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="First N documents of each corpus (smoke runs).")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_main_job.json")
    parser.add_argument("--force", action="store_true", help="Redo finished runs.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds before a run is killed.")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one run in this process (a JSON spec)
    args = parser.parse_args()
    if args.cell:
        run_cell(json.loads(args.cell))
        return
    runs, modes = args.runs.split(","), args.modes.split(",")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(runs) - set(RUNS) or set(modes) - set(MODES):
        parser.error(f"unknown runs or modes: {sorted((set(runs) - set(RUNS)) | (set(modes) - set(MODES)))}")
    threads = args.threads or len(os.sched_getaffinity(0))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sbmoe.atomic import write_json

    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    cells = results.setdefault("runs", {})
    sittings = results.get("setup", {}).get("sittings", [])
    sittings = [sittings] if isinstance(sittings, str) else list(sittings)
    sitting = {"started": utc_now(), "runs": runs, "datasets": datasets, "modes": modes}
    sittings.append(sitting)  # ratios hold within one sitting: each cell says when it ran
    results["setup"] = {"threads": threads, "batch_size": args.batch_size, "limit": args.limit, "datasets": datasets,
                        "runs": runs, "modes": modes, "sittings": sittings}
    results["machine"] = machine(threads)
    with tempfile.TemporaryDirectory(prefix="bench-main-job-") as tmp:
        work = Path(tmp)
        paths = folders(datasets, args.limit, work / "data")
        (work / "cache").mkdir()
        for dataset in datasets:
            for run in runs:
                own = [m for m in modes if m == "cold" or run not in ("beir", *ST_RUNS)]  # they cache nothing
                todo = [m for m in own if args.force or f"{run}/{dataset}/{m}" not in cells]
                if not todo:
                    continue
                cache = Path(tempfile.mkdtemp(dir=work / "cache"))  # cold: empty; warm: what the cold run left
                # sbmoe gets a registry dataset by name, as the README command names it (a folder path is
                # fingerprinted by its contents on every run: ~2 s more on a warm run)
                folder = dataset if run in SBMOE_RUNS and not args.limit and not dataset.startswith(QUERIES_PREFIX) \
                    else paths[dataset]
                for mode in ["cold", *todo] if todo == ["warm"] else todo:  # a warm run needs a cold one first
                    spec = {"run": run, "dataset": dataset, "folder": folder, "out": str(work / "cell.json"),
                            "args": {"batch_size": args.batch_size, "threads": threads}}
                    env = {**os.environ, "SBMOE_CACHE": str(cache), "OMP_NUM_THREADS": str(threads),
                           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
                    env.pop(BACKEND_ENV, None)  # sbmoe-auto is what a user gets
                    Path(spec["out"]).unlink(missing_ok=True)
                    if mode == "warm" and run in SBMOE_RUNS and not dataset.startswith(QUERIES_PREFIX):
                        # the README command itself, as a user runs it: nothing else to time
                        report = work / "warm-report"
                        usage = measured(cli_command(run, folder, report), env, args.timeout)
                        inner = ({**run_outcome(report, folder), "timed": "the sbmoe console script"}
                                 if usage["exit"] == 0 else {})
                    else:
                        usage = measured([sys.executable, __file__, "--cell", json.dumps(spec)], env, args.timeout)
                        inner = json.loads(Path(spec["out"]).read_text()) if Path(spec["out"]).is_file() else {}
                    if usage["exit"] != 0 and "unavailable" not in inner:
                        inner["failed"] = f"exit {usage['exit']}: {' / '.join(usage['stderr_tail'])}"
                    key = f"{run}/{dataset}/{mode}"
                    cells[key] = {**usage, **inner, "mode": mode, "at": utc_now()}
                    print(f"{key:<40} " + json.dumps({k: v for k, v in cells[key].items() if k != "stderr_tail"}),
                          flush=True)
                    write_json(args.out, results)
    sitting["ended"] = utc_now()
    write_json(args.out, results)
    shown = sorted({key.split("/")[1] for key in cells}, key=lambda d: (d.startswith(QUERIES_PREFIX), d))
    write_markdown(args.out.with_suffix(".md"), results, list(RUNS), shown, list(MODES))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
