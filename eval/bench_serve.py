"""``sbmoe serve`` under load (issue 55): latency and throughput at several concurrencies over loopback,
against the same queries through ``Retriever.search`` in process.

    python eval/bench_serve.py [--concurrency 1,8,32,64] [--requests 2000] [--soak-requests 10000]
                               [--max-seconds 120] [--soak-max-seconds 900] [--threads 2] [--index DIR]

On the SciFact HNSW index with minilm (built into the cache on first use, or ``--index DIR``): first the
in-process latency of ``Retriever.search`` with one query at a time (p50/p95), then ``sbmoe serve`` is started
on 127.0.0.1 (a free port) in a child process and driven by a bounded async client: at each concurrency, an
untimed warm-up, then ``--requests`` POST searches of one query each (k=10; stopped at ``--max-seconds``),
cycling through the 300 test queries; p50/p95/p99 latency, queries/s, errors (HTTP >= 400 and dropped
connections), the server's mean encoder batch (from /metrics), hits that differ from the in-process run,
and the server's RSS before and after. Then a soak at the highest concurrency (``--soak-requests``, RSS
growth measured from after its warm-up) during which the index is reloaded once (POST /admin/reload).
Every request goes to 127.0.0.1 only; the server is stopped with SIGTERM at the end (it must exit 0).
Run it with nothing else on the machine. Writes bench_serve.json and bench_serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import command_line, machine_line, percentile

from sbmoe.atomic import atomic_file, write_json

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("sbmoe", "torch", "transformers", "sentence-transformers", "onnxruntime", "faiss-cpu", "fastapi", "uvicorn",
            "uvloop", "httptools", "httpx", "mcp", "numpy")
TARGETS = {"c1_p50_over_inprocess": 2.0, "qps32_over_qps1": 4.0, "p99_at_32_ms": 300.0, "soak_rss_growth": 0.05}
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
K = 10
BATCH_CEILING = 32  # queries per in-process search call when measuring the ceiling


def cpu_description() -> dict[str, object]:
    """The CPU model and the SIMD flags that decide encoder and FAISS speed."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def package_versions() -> dict[str, str | None]:
    from sbmoe.evaluation.provenance import package_versions as installed

    return {"python": platform.python_version(), **installed(PACKAGES)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ensure_index(args: argparse.Namespace) -> Path:
    """The HNSW index of the dataset with the model: ``--index``, or built once into the sbmoe cache."""
    from sbmoe import EncoderConfig, IndexConfig, build_index
    from sbmoe.data import cache_root
    from sbmoe.index.faiss_index import IndexType

    if args.index is not None:
        return args.index
    folder = cache_root() / "bench_serve" / f"{args.dataset}-{args.model}-hnsw"
    if not (folder / "meta.json").is_file():
        build_index(IndexConfig(dataset=args.dataset, output=folder, factory=IndexType("hnsw").factory(),
                                encoder=EncoderConfig(model=args.model), show_progress=False, overwrite=True))
    return folder


def in_process(index_dir: Path, texts: list[str], warmup: int) -> tuple[dict, dict[str, list[str]]]:
    """Per-query latency of ``Retriever.search`` (one string at a time, k=10) and the ids it ranks; then the
    same queries searched in lists of ``BATCH_CEILING``: the most queries per second (and the least CPU per
    query) that this encoder and index give on these cores, the ceiling of any server in front of them."""
    from sbmoe.index.retriever import Retriever

    retriever = Retriever.from_index(index_dir)
    for text in texts[:warmup]:
        retriever.search(text, k=K)
    milliseconds, ranked = [], {}
    for text in texts:
        start = time.perf_counter()
        run = retriever.search(text, k=K)
        milliseconds.append((time.perf_counter() - start) * 1000)
        ranked[text] = list(run["0"])
    cpu, started = time.process_time(), time.perf_counter()
    for first in range(0, len(texts), BATCH_CEILING):
        retriever.search(texts[first:first + BATCH_CEILING], k=K)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    stats = {"queries": len(texts), "k": K, "p50_ms": percentile(milliseconds, 50),
             "p95_ms": percentile(milliseconds, 95), "mean_ms": statistics.mean(milliseconds),
             "batched_qps": len(texts) / seconds, "batched_cpu_ms_per_query": 1000 * cpu / len(texts)}
    return stats, ranked


def start_server(index_dir: Path, threads: int, log: Path, max_queue: int) -> tuple[subprocess.Popen, int]:
    """``sbmoe serve`` on 127.0.0.1 and a free port, its stderr (start-up line, access log) into ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env.pop("SBMOE_SERVE_TOKEN", None)
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "sbmoe.cli", "serve", "--index", f"bench={index_dir}",
                                    "--host", "127.0.0.1", "--port", "0", "--threads", str(threads),
                                    "--max-queue", str(max_queue)],
                                   stdout=subprocess.DEVNULL, stderr=handle, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"sbmoe serve did not start: {log.read_text(errors='replace')[-1000:]}")


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(queries, passes) of the encoder so far, from /metrics."""
    found = {m.group(1): float(m.group(2)) for m in
             re.finditer(r"^sbmoe_encoder_batch_queries_(sum|count) (\S+)$", metrics_text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


async def drive(url: str, texts: list[str], concurrency: int, requests: int, max_seconds: float,
                expected: dict[str, list[str]], reload_at: int | None = None) -> dict:
    """``requests`` searches by ``concurrency`` workers (stopped at ``max_seconds``), latencies and errors."""
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    dropped, differing, issued = 0, 0, 0
    reload_result: dict | None = None
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def reload() -> None:
            nonlocal reload_result
            started = time.perf_counter()
            response = await client.post("/admin/reload", json={"index": "bench"})
            reload_result = {"status": response.status_code, "seconds": time.perf_counter() - started,
                             "body": response.json()}

        async def worker() -> None:
            nonlocal dropped, differing, issued
            while issued < requests and time.monotonic() < deadline:
                text = texts[issued % len(texts)]
                issued += 1
                if reload_at is not None and issued == reload_at:
                    asyncio.get_running_loop().create_task(reload())
                start = time.perf_counter()
                try:
                    response = await client.post("/api/v1.0/indexes/bench/search", json={"queries": [text], "k": K})
                except httpx.TransportError:
                    dropped += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                if response.status_code == 200:
                    ids = [h["docid"] for h in response.json()["results"][0]["hits"]]
                    differing += ids != expected[text]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        while reload_at is not None and reload_result is None and time.perf_counter() - started < max_seconds:
            await asyncio.sleep(0.1)
    answered = len(latencies)
    errors = sum(n for code, n in statuses.items() if int(code) >= 400)
    return {"concurrency": concurrency, "requests": answered + dropped, "seconds": seconds,
            "qps": answered / seconds if seconds else 0.0, "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99), "statuses": statuses,
            "errors": errors, "server_errors": sum(n for code, n in statuses.items() if int(code) >= 500),
            "dropped": dropped, "hits_differing_from_in_process": differing, "reload": reload_result,
            "stopped_by_time": answered + dropped < requests}


def level(url: str, pid: int, texts: list[str], concurrency: int, requests: int, warmup: int, max_seconds: float,
          expected: dict[str, list[str]], reload_at: int | None = None) -> dict:
    """One concurrency: an untimed warm-up, then the measured run, with RSS and the mean encoder batch."""
    import httpx

    asyncio.run(drive(url, texts, concurrency, warmup, max_seconds, expected))
    queries_before, passes_before = batch_totals(httpx.get(f"{url}/metrics").text)
    rss_start = rss_mb(pid)
    server_cpu, client_cpu = cpu_seconds(pid), cpu_seconds(os.getpid())
    result = asyncio.run(drive(url, texts, concurrency, requests, max_seconds, expected, reload_at))
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
    queries_after, passes_after = batch_totals(httpx.get(f"{url}/metrics").text)
    passes = passes_after - passes_before
    answered = max(result["requests"] - result["dropped"], 1)
    result.update(rss_start_mb=rss_start, rss_end_mb=rss_mb(pid),
                  mean_batch_queries=(queries_after - queries_before) / passes if passes else float("nan"),
                  server_cpu_ms_per_request=1000 * server_cpu / answered,
                  client_cpu_ms_per_request=1000 * client_cpu / answered)
    print(f"concurrency {concurrency}: {result['qps']:.1f} q/s, p50 {result['p50_ms']:.1f} ms, p99 "
          f"{result['p99_ms']:.1f} ms, errors {result['errors']}, dropped {result['dropped']}, mean batch "
          f"{result['mean_batch_queries']:.1f}, CPU ms/request server {result['server_cpu_ms_per_request']:.1f} "
          f"client {result['client_cpu_ms_per_request']:.1f}", flush=True)
    return result


def verdicts(result: dict) -> dict[str, dict]:
    by_concurrency = {lv["concurrency"]: lv for lv in result["levels"]}
    out = {}
    if 1 in by_concurrency:
        ratio = by_concurrency[1]["p50_ms"] / result["in_process"]["p50_ms"]
        out["c1_p50_over_inprocess"] = {"value": ratio, "met": ratio <= TARGETS["c1_p50_over_inprocess"]}
    if 1 in by_concurrency and 32 in by_concurrency:
        ratio = by_concurrency[32]["qps"] / by_concurrency[1]["qps"]
        out["qps32_over_qps1"] = {"value": ratio, "met": ratio >= TARGETS["qps32_over_qps1"]}
        share = by_concurrency[32]["qps"] / result["in_process"]["batched_qps"]
        out["qps32_over_inprocess_batched"] = {"value": share, "met": None}  # context: no bound
        p99 = by_concurrency[32]["p99_ms"]
        out["p99_at_32_ms"] = {"value": p99, "met": p99 <= TARGETS["p99_at_32_ms"]}
    soak = result.get("soak")
    if soak:
        growth = soak["rss_end_mb"] / soak["rss_start_mb"] - 1
        out["soak_rss_growth"] = {"value": growth, "met": growth <= TARGETS["soak_rss_growth"]}
        out["soak_errors"] = {"value": soak["server_errors"] + soak["dropped"],
                              "met": soak["server_errors"] == 0 and soak["dropped"] == 0}
        reload = soak.get("reload") or {}
        out["reload_under_load"] = {"value": reload.get("status"),
                                    "met": reload.get("status") == 200 and soak["errors"] == 0 and soak["dropped"] == 0}
    return out


def markdown(result: dict) -> str:
    inproc = result["in_process"]
    cpu = result["cpu"]
    lines = ["# `sbmoe serve` under load", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; CPU {cpu['model']}, {cpu['cores']} cores, flags "
             f"{' '.join(cpu['flags']) or 'none of ' + ', '.join(CPU_FLAGS)}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
             f"Index: {result['index']['factory']} over {result['index']['count']} documents "
             f"({result['index']['model']}); server threads {result['threads']}, OMP_WAIT_POLICY "
             f"{result.get('omp_wait_policy', 'unset')}; one query per request, k={K}.", "",
             f"In-process `Retriever.search` (one query at a time): p50 {inproc['p50_ms']:.2f} ms, p95 "
             f"{inproc['p95_ms']:.2f} ms over {inproc['queries']} queries. The same queries in lists of "
             f"{BATCH_CEILING} (the ceiling of any server on these cores): {inproc['batched_qps']:.1f} queries/s, "
             f"{inproc['batched_cpu_ms_per_query']:.1f} CPU ms per query.", "",
             "Server and client CPU: user + system CPU milliseconds per answered request (the client is this "
             "script, on the same cores).", "",
             "| concurrency | requests | q/s | p50 ms | p95 ms | p99 ms | errors | dropped | mean batch "
             "| server CPU ms | client CPU ms | hits differing | RSS start -> end MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lv in [*result["levels"], *([{**result["soak"], "concurrency": f"{result['soak']['concurrency']} (soak)"}]
                                    if result.get("soak") else [])]:
        lines.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['qps']:.1f} | {lv['p50_ms']:.1f} | "
                     f"{lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} | {lv['errors']} | {lv['dropped']} | "
                     f"{lv['mean_batch_queries']:.1f} | {lv['server_cpu_ms_per_request']:.1f} | "
                     f"{lv['client_cpu_ms_per_request']:.1f} | {lv['hits_differing_from_in_process']} | "
                     f"{lv['rss_start_mb']:.0f} -> {lv['rss_end_mb']:.0f} |")
    lines += ["", "| target | value | bound | |", "|---|---|---|---|"]
    bounds = {"c1_p50_over_inprocess": "<= 2x", "qps32_over_qps1": ">= 4x", "p99_at_32_ms": "<= 300 ms",
              "qps32_over_inprocess_batched": "(context)",
              "soak_rss_growth": "<= 5%", "soak_errors": "0", "reload_under_load": "200, 0 failed"}
    for name, verdict in result["verdicts"].items():
        value = verdict["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        state = "" if verdict["met"] is None else "met" if verdict["met"] else "missed"
        lines.append(f"| {name} | {shown} | {bounds[name]} | {state} |")
    lines += ["", f"Server shutdown on SIGTERM: exit code {result['server_exit_code']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32,64", help="Comma-separated concurrency levels.")
    parser.add_argument("--requests", type=int, default=2000, help="Measured requests per level.")
    parser.add_argument("--warmup", type=int, default=100, help="Untimed requests before each level.")
    parser.add_argument("--max-seconds", type=float, default=120, help="Time cap of each level.")
    parser.add_argument("--soak-requests", type=int, default=10_000, help="Requests of the soak (0: no soak).")
    parser.add_argument("--soak-max-seconds", type=float, default=900, help="Time cap of the soak.")
    parser.add_argument("--inprocess-queries", type=int, default=300, help="Queries timed in process.")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads, here and in the server.")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--index", type=Path, default=None, help="An index folder (default: the dataset's HNSW "
                        "index with --model, built into the cache once).")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if min(levels) < 1 or args.requests < 1 or args.warmup < 0:
        raise SystemExit("concurrency and --requests must be positive")

    import torch

    from sbmoe import BeirDataset
    from sbmoe.index.faiss_index import IndexMeta

    torch.set_num_threads(args.threads)
    index_dir = ensure_index(args)
    meta = IndexMeta.from_json(index_dir / "meta.json")
    texts = list(BeirDataset.open(meta.dataset or args.dataset).load_split("test")[0].values())
    in_process_stats, expected = in_process(index_dir, texts[:args.inprocess_queries], warmup=20)
    texts = texts[:args.inprocess_queries]
    print(f"in process: p50 {in_process_stats['p50_ms']:.2f} ms; batched {in_process_stats['batched_qps']:.1f} q/s, "
          f"{in_process_stats['batched_cpu_ms_per_query']:.1f} CPU ms/query", flush=True)
    result: dict = {"command": command_line("eval/bench_serve.py", args), "machine": machine_line(),
                    "cpu": cpu_description(), "versions": package_versions(), "threads": args.threads,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (sbmoe serve's default)"),
                    "index": {"path": str(index_dir), "factory": meta.factory, "count": meta.count,
                              "model": meta.model}, "targets": TARGETS, "in_process": in_process_stats,
                    "levels": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        log = Path(tmp) / "server.log"
        process, port = start_server(index_dir, args.threads, log, max_queue=max(256, 4 * max(levels)))
        url = f"http://127.0.0.1:{port}"
        try:
            for concurrency in levels:
                result["levels"].append(level(url, process.pid, texts, concurrency, args.requests, args.warmup,
                                              args.max_seconds, expected))
            if args.soak_requests:
                top = max(levels)
                result["soak"] = level(url, process.pid, texts, top, args.soak_requests, args.warmup,
                                       args.soak_max_seconds, expected, reload_at=args.soak_requests // 2)
            process.send_signal(signal.SIGTERM)
            result["server_exit_code"] = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    result["verdicts"] = verdicts(result)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "bench_serve.json", result)
    text = markdown(result)
    with atomic_file(args.output_dir / "bench_serve.md") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
