"""The ``sbmoe`` command: a thin typer layer over the Python API. Every failure is one line on stderr.

Each command turns its options into the API's config dataclass and calls one public function; option
defaults are read from those dataclasses, so the API defines every default once.

Start-up stays under a second: at module level this file imports only torch-free modules (config
dataclasses, choices, error classes); each command imports the heavy code it runs (torch,
sentence-transformers, faiss) inside its function. ``tests/test_lazy_imports.py`` holds every command to it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from .atomic import CorruptArtifactError, WriteFailedError
from .bm25.engines import BM25Config, BM25UnavailableError, LuceneBM25, LuceneError
from .bm25.engines import search_to_trec as bm25_search_to_trec
from .bm25.fusion import FUSIONS
from .data import BeirDataset, DataFormatError, DatasetNotFoundError
from .distributed import is_main
from .evaluation.benchmark import EvalConfig, evaluate
from .evaluation.metrics import DEFAULT_METRICS, MetricError
from .evaluation.report import format_leaderboard, format_metric_table
from .evaluation.routing import RoutingConfig, routing_report
from .evaluation.significance import CORRECTIONS, TESTS, SignificanceConfig
from .evaluation.systems import SystemsConfig
from .experts.config import EXPERT_KINDS, ROUTING_MODES, ExpertConfig, RoutedConfig
from .index.builder import IndexConfig, build_index
from .index.faiss_index import INDEX_TYPES, IndexMismatchError, IndexType
from .index.shards import SHARD_DTYPES, ShardError
from .lm.config import PSR_FRACTION, LMConfig, LMTrainConfig
from .lm.data import CORPORA
from .memory import reuse_heap
from .models.aliases import ALIASES, ModelLoadError
from .models.choices import BACKENDS, GATES, MOE_CHOICES
from .models.declared import SIMILARITIES
from .models.encoder import EncoderConfig, set_threads
from .models.export import EXPORT_FORMATS, ExportConfig, export_model
from .moe.quant.config import QUANT_METHODS, QuantConfig
from .runs import DEFAULT_DEPTH
from .serving.config import TOKEN_ENV, BatchConfig, Limits, ServeConfig, index_specs
from .training.config import TrainConfig

app = typer.Typer(help="Dense retrieval with a single-block MoE head: train, index, search, evaluate.",
                  no_args_is_help=True, add_completion=False)

USER_ERRORS = (DataFormatError, DatasetNotFoundError, ModelLoadError, IndexMismatchError, MetricError,
               ShardError, BM25UnavailableError, LuceneError, CorruptArtifactError, WriteFailedError,
               FileExistsError, FileNotFoundError, ValueError)

F = TypeVar("F", bound=Callable[..., Any])
ENC, IDX, TRN, LM, LMT = EncoderConfig(), IndexConfig, TrainConfig, LMConfig, LMTrainConfig  # default sources


def user_errors(func: F) -> F:
    """Turn expected failures (bad input, missing files, unknown models) into one line and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reuse_heap()  # a command encodes thousands of batches: reuse their activation memory (memory.py)
    if not verbose:
        hide_library_progress_bars()


def hide_library_progress_bars() -> None:
    """Hide transformers' per-load "Loading weights" bar (ours stay) without importing transformers here:
    a command that needs no model (a warm eval) must not pay for it. Both libraries read the switch on import."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def given(**params: Any) -> dict[str, Any]:
    """The options a user set (None means: keep the API's or the index's own value)."""
    return {name: value for name, value in params.items() if value is not None}


QUERY_HITS = 10  # hits shown per --query: a screenful


def progress() -> bool:
    return sys.stderr.isatty()


MODEL = typer.Option(ENC.model, "--model", "-m", help=f"Alias ({', '.join(ALIASES)}), Hugging Face id, or "
                     "local model folder.")
POOLING = typer.Option(None, help="mean | cls | max (default: the model's own).")
MAX_LENGTH = typer.Option(None, "--max-length", help="Truncate inputs to this many tokens.")
NORMALIZE = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize embeddings.")
BATCH = typer.Option(ENC.batch_size, "--batch-size", "-b")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1, ...")
THREADS = typer.Option(None, "--threads", help="torch CPU threads.")
SPLIT = typer.Option(None, help="With a dataset name: the qrels split whose queries to run.")
BACKEND = typer.Option(ENC.backend, "--backend", help=f"{' | '.join(BACKENDS)}: torch, or ONNX Runtime on the CPU "
                       "(the model folder's onnx/ graph, else one exported once into the cache by a child process); "
                       "auto: ONNX Runtime fp32 on the CPU where it is installed, else torch; torch-bf16 (opt-in): "
                       "the Transformer in bfloat16 on a CPU with bf16 instructions, ~1e-4 in cosine.")
SIMILARITY = typer.Option(None, "--similarity", help=f"{' | '.join(SIMILARITIES)}: score with this instead of the "
                          "model's declared similarity_fn_name (sentence-transformers' default: cosine).")
QUERY_PROMPT = typer.Option(None, "--query-prompt", help="Prepend this to every query instead of the model's "
                            "declared query prompt ('' for none).")
DOCUMENT_PROMPT = typer.Option(None, "--document-prompt", help="Prepend this to every document instead of the "
                               "model's declared document prompt ('' for none).")
SIG = SignificanceConfig()
BASELINE = typer.Option(SIG.baseline, "--baseline", help="The system the others are tested against (default: the "
                        "first).")
TEST = typer.Option(SIG.test, "--test", help=f"Paired test over queries: {' | '.join(TESTS)}.")
CORRECTION = typer.Option(SIG.correction, "--correction", help="Multiple-comparison correction over systems x "
                          f"datasets x metrics: {' | '.join(CORRECTIONS)}.")
SELF_HITS = typer.Option(None, "--drop-self-hits/--keep-self-hits",
                         help="Remove (or keep) a hit whose id equals the query id. Default: the registry's rule "
                         "for a known dataset; for another collection, dropped only for queries that are documents "
                         "of the corpus (same id, same text); never for a queries file.")


@app.command()
@user_errors
def index(
    dataset: str = typer.Argument(..., help="Dataset name (scifact, ...) or BEIR folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to create."),
    model: str = MODEL,
    pooling: str | None = POOLING,
    max_length: int | None = MAX_LENGTH,
    normalize: bool | None = NORMALIZE,
    batch_size: int = BATCH,
    device: str | None = DEVICE,
    index_type: str = typer.Option(IndexType.kind, "--index-type", help=" | ".join(INDEX_TYPES)),
    factory: str | None = typer.Option(None, help="A raw faiss index-factory string (overrides --index-type)."),
    hnsw_m: int = typer.Option(IndexType.hnsw_m, "--hnsw-m", help="HNSW graph degree M."),
    ef_construction: int | None = typer.Option(None, "--ef-construction", help="HNSW build-time beam."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW search-time beam (stored)."),
    nlist: int = typer.Option(IndexType.nlist, help="IVF lists."),
    nprobe: int | None = typer.Option(None, help="IVF lists searched (stored)."),
    pq_m: int = typer.Option(IndexType.pq_m, "--pq-m", help="PQ sub-quantizers (must divide the dimension)."),
    chunk_size: int = typer.Option(IDX.chunk_size, "--chunk-size", help="Documents per on-disk shard."),
    shard_dtype: str = typer.Option(IDX.shard_dtype, "--shard-dtype", help=" | ".join(SHARD_DTYPES)),
    devices: str | None = typer.Option(None, help="Encode on several devices: cuda:0,cuda:1 or cpu,cpu."),
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Keep <output>.shards after success."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
    threads: int | None = THREADS,
    backend: str = BACKEND,
    similarity: str | None = SIMILARITY,
    query_prompt: str | None = QUERY_PROMPT,
    document_prompt: str | None = DOCUMENT_PROMPT,
) -> None:
    """Encode a corpus into a FAISS index folder (index.faiss, doc_ids.txt, meta.json).

    Encoding streams the corpus into shards beside the output; rerun the same command after a kill and
    it resumes from the last complete shard.
    """
    set_threads(threads)
    config = IndexConfig(
        dataset=dataset, output=output,
        factory=factory or IndexType(index_type, hnsw_m=hnsw_m, nlist=nlist, pq_m=pq_m).factory(),
        build_params=given(efConstruction=ef_construction), search_params=given(efSearch=ef_search, nprobe=nprobe),
        chunk_size=chunk_size, shard_dtype=shard_dtype, devices=tuple(split_list(devices)), keep_shards=keep_shards,
        use_cache=not no_cache, overwrite=overwrite, show_progress=progress(),
        encoder=EncoderConfig(model, pooling, max_length, normalize, batch_size, device, backend, similarity,
                              query_prompt, document_prompt))
    built = build_index(config)
    if built is not None:  # None on the ranks other than 0 of a torchrun job
        typer.echo(f"indexed {built.meta.count} documents ({built.meta.dim}-d, {built.meta.factory}, "
                   f"{built.meta.similarity} similarity) -> {output}")


@app.command()
@user_errors
def search(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index folder from `sbmoe index`."),
    queries: str | None = typer.Option(None, "--queries", "-q", help="Queries file (.jsonl or .tsv) or dataset "
                                       "name (with --output)."),
    query: list[str] | None = typer.Option(None, "--query", help="A query text; repeat for several. Prints a "
                                           "ranked list (rank, score, doc id, title, snippet) instead of a run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="TREC run file to write (with --queries)."),
    k: int | None = typer.Option(None, "-k", help=f"Hits per query (default: {DEFAULT_DEPTH} for a run file, "
                                 f"{QUERY_HITS} with --query)."),
    as_json: bool = typer.Option(False, "--json", help="With --query: print the hits as JSON."),
    dataset: str | None = typer.Option(None, "--dataset", help="With --query: the corpus for titles and "
                                       "snippets (default: the one in meta.json)."),
    split: str | None = SPLIT,
    model: str | None = typer.Option(None, "--model", "-m", help="Encoder (default: the one in meta.json)."),
    nprobe: int | None = typer.Option(None, help="IVF lists to search (overrides meta.json)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW search beam (overrides meta.json)."),
    batch_size: int = BATCH,
    threads: int | None = THREADS,
    drop_self_hits: bool | None = SELF_HITS,
    backend: str | None = typer.Option(None, "--backend", help=f"{' | '.join(BACKENDS)} (default: the one that "
                                       "built the index)."),
    similarity: str | None = typer.Option(None, "--similarity", help="Must equal the similarity the index was "
                                          "built for (default: meta.json's)."),
    query_prompt: str | None = typer.Option(None, "--query-prompt", help="Prepend this to every query (default: "
                                            "the prompt meta.json records, else the model's)."),
) -> None:
    """Search an index: texts typed with --query (a ranked list on the screen), or a queries file or a
    dataset's queries with --queries (a TREC run written to --output)."""
    set_threads(threads)
    params = given(nprobe=nprobe, efSearch=ef_search)
    if query:
        if queries is not None or output is not None:
            raise ValueError("--query prints its hits; use it without --queries and --output")
        from .index.hits import format_hits, hits_json, search_queries

        results = search_queries(index_dir, query, QUERY_HITS if k is None else k, model, params, dataset, backend,
                                 batch_size, similarity, query_prompt)
        typer.echo(hits_json(results) if as_json else format_hits(results))
        return
    if queries is None or output is None:
        raise ValueError("give --query TEXT, or --queries with --output")
    from .index.retriever import search_to_trec

    run = search_to_trec(index_dir, queries, output, DEFAULT_DEPTH if k is None else k, split, model, params,
                         batch_size, drop_self_hits, backend, similarity, query_prompt)
    typer.echo(f"searched {len(run)} queries -> {output}")


@app.command("eval")
@user_errors
def evaluate_command(
    model: str = typer.Option(ENC.model, "--model", "-m", help="Encoder(s), comma-separated: each is a system."),
    datasets: str = typer.Option(",".join(EvalConfig().datasets), "--datasets", "-d",
                                 help="Comma-separated dataset names or folders, or 'all': every BEIR folder "
                                 "under the data roots."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), help="Comma-separated ir-measures names."),
    bm25: bool = typer.Option(False, "--bm25", help="Add Lucene BM25 (pyserini) as a system."),
    hybrid: str | None = typer.Option(None, help="Fuse the first model with this system (bm25 or a model)."),
    fusion: str = typer.Option(SystemsConfig.fusion, help=f"Hybrid fusion: {' | '.join(FUSIONS)}."),
    alpha: float = typer.Option(SystemsConfig.alpha, help="Convex fusion weight of the first model."),
    split: str | None = typer.Option(None, help="qrels split (default: the dataset's test split)."),
    output_dir: Path = typer.Option(EvalConfig.output_dir, "--output-dir",
                                    help="Where runs, JSON, markdown and PNG go."),
    pooling: str | None = POOLING,
    max_length: int | None = MAX_LENGTH,
    normalize: bool | None = NORMALIZE,
    batch_size: int = BATCH,
    device: str | None = DEVICE,
    threads: int | None = THREADS,
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    drop_self_hits: bool | None = SELF_HITS,
    backend: str = BACKEND,
    similarity: str | None = SIMILARITY,
    query_prompt: str | None = QUERY_PROMPT,
    document_prompt: str | None = DOCUMENT_PROMPT,
    baseline: str | None = BASELINE,
    test: str = TEST,
    correction: str = CORRECTION,
    significance_alpha: float = typer.Option(SIG.alpha, "--significance-alpha",
                                             help="A cell is marked when its corrected p-value is below this."),
) -> None:
    """Zero-shot evaluation on BEIR datasets: one table per system, and a leaderboard (markdown, PNG) when
    several systems or datasets run. With several systems, each is tested against the baseline per dataset
    and metric (paired over queries); per-query scores go to eval.per_query.tsv, p-values to eval.json."""
    set_threads(threads)
    systems = SystemsConfig(models=split_list(model), bm25=bm25, hybrid=hybrid, fusion=fusion, alpha=alpha,
                            encoder=EncoderConfig(ENC.model, pooling, max_length, normalize, batch_size, device,
                                                  backend, similarity, query_prompt, document_prompt),
                            bm25_config=BM25Config(**given(threads=threads)), use_cache=not no_cache,
                            show_progress=progress())
    metric_names = split_list(metrics)
    tests = SignificanceConfig(baseline=baseline, test=test, correction=correction, alpha=significance_alpha)
    report = evaluate(EvalConfig(systems=systems, datasets=split_list(datasets), metrics=metric_names, split=split,
                                 output_dir=output_dir, drop_self_hits=drop_self_hits, significance=tests))
    for name in report.systems():
        typer.echo(f"\nsystem: {name}{scoring_note(report.provenance.get('models', {}).get(name, {}))}\n"
                   f"{format_metric_table(report, name)}")
    if len(report.systems()) > 1:
        typer.echo(f"\nleaderboard ({metric_names[0]})\n{format_leaderboard(report, metric_names[0])}")
        echo_significance(report)
    typer.echo(f"\nresults: {output_dir / 'eval.json'}")


def scoring_note(described: dict) -> str:
    """How a dense system scored: its similarity (and whether a flag chose it) and its prompts, for the header."""
    if "similarity" not in described:
        return ""
    note = f" ({described['similarity']} similarity{', overridden' if described.get('similarity_overridden') else ''}"
    prompts = {task: p for task, p in (described.get("prompts") or {}).items() if p}
    return note + "".join(f", {task} prompt {p!r}" for task, p in prompts.items()) + ")"


def echo_significance(report: Any) -> None:
    """The tests against the baseline and the legend of the marks (nothing without comparisons)."""
    from .evaluation.report import format_significance

    table = format_significance(report)
    if table:
        typer.echo(f"\nagainst the baseline\n{table}\n\n{report.significance.legend()}")


@app.command("compare")
@user_errors
def compare_command(
    runs: list[str] = typer.Argument(None, help="TREC run files (any tool), each PATH or NAME=PATH."),
    qrels: str = typer.Option(..., "--qrels", help="Dataset name or BEIR folder (its --split qrels), or a qrels "
                              "file (BEIR TSV or TREC)."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), help="Comma-separated ir-measures names."),
    split: str | None = typer.Option(None, help="With a dataset: the qrels split (default: its test split)."),
    systems_from: Path | None = typer.Option(None, "--systems-from", help="Seed groups: a JSON file mapping "
                                             "name -> list of run files, or a folder of per-system folders of "
                                             "run files (one per seed)."),
    fuse: str | None = typer.Option(None, "--fuse", help="rrf: add the reciprocal-rank fusion of the run files."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Write compare.json, compare.md and "
                                           "compare.per_query.tsv here."),
    baseline: str | None = BASELINE,
    test: str = TEST,
    correction: str = CORRECTION,
    significance_alpha: float = typer.Option(SIG.alpha, "--alpha", "--significance-alpha",
                                             help="A cell is marked when its corrected p-value is below this."),
) -> None:
    """Leaderboard and paired significance tests for TREC run files against qrels, as `sbmoe eval` gives
    for its own systems; seed groups show mean ± std over seeds."""
    from .evaluation.compare import CompareConfig, compare_runs
    from .evaluation.report import format_systems_table

    tests = SignificanceConfig(baseline=baseline, test=test, correction=correction, alpha=significance_alpha)
    report = compare_runs(CompareConfig(runs=list(runs or []), qrels=qrels, metrics=split_list(metrics), split=split,
                                        systems_from=systems_from, fuse=fuse, output_dir=output_dir,
                                        significance=tests))
    for dataset in report.datasets():
        typer.echo(format_systems_table(report, dataset))
    echo_significance(report)
    if output_dir is not None:
        typer.echo(f"\nresults: {output_dir / 'compare.json'}")


@app.command("export")
@user_errors
def export_command(
    model: str = typer.Argument(..., help="Alias, Hugging Face id or local model folder (an SB-MoE model too)."),
    output: Path = typer.Argument(..., help="Folder to write: the sentence-transformers model plus onnx/."),
    export_format: str = typer.Option(ExportConfig.format, "--format", help=" | ".join(EXPORT_FORMATS)),
    quantize: str | None = typer.Option(None, "--quantize", help="int8: also write onnx/model_int8.onnx."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Export a model to ONNX (onnx/model.onnx, opset 17) inside a plain sentence-transformers folder;
    use it with --backend onnx (or onnx-int8) on index, search and eval."""
    written = export_model(ExportConfig(model=model, output=output, format=export_format, quantize=quantize,
                                        overwrite=overwrite))
    typer.echo(f"exported {model} -> {written}")


@app.command("routing")
@user_errors
def routing_command(
    model: str = typer.Argument(..., help="A trained SB-MoE model folder."),
    datasets: str = typer.Option(",".join(RoutingConfig().datasets), "--datasets", "-d",
                                 help="Comma-separated dataset names or folders."),
    split: str | None = typer.Option(None, help="qrels split (default: the dataset's test split)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Write routing.json and routing.png here."),
    batch_size: int = BATCH,
    threads: int | None = THREADS,
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
) -> None:
    """Expert usage of an SB-MoE model per dataset: shares, entropy, and how often a query's relevant
    documents are routed to the query's expert."""
    set_threads(threads)
    report = routing_report(RoutingConfig(model=model, datasets=split_list(datasets), split=split,
                                          output_dir=output_dir, batch_size=batch_size, use_cache=not no_cache,
                                          show_progress=progress()))
    typer.echo(report.table())


SRV, LIM, BAT = ServeConfig(), Limits(), BatchConfig()


@app.command("serve")
@user_errors
def serve_command(
    index_dirs: list[str] = typer.Option(..., "--index", "-i", help="[NAME=]DIR: an index folder from `sbmoe "
                                         "index`; repeat for several (NAME defaults to the folder's name)."),
    bm25_dirs: list[str] | None = typer.Option(None, "--bm25", help="[NAME=]DIR: a Lucene index of the same corpus "
                                               "(`sbmoe bm25 index`) for modes bm25 and hybrid of index NAME."),
    host: str = typer.Option(SRV.host, "--host", help="Address to listen on; any but loopback needs a token."),
    port: int = typer.Option(SRV.port, "--port", help="0: a free port (the start-up line names it)."),
    token_file: Path | None = typer.Option(None, "--token-file", help=f"File holding the bearer token (default: "
                                           f"${TOKEN_ENV}); with a token every endpoint but /healthz needs it."),
    mcp: bool = typer.Option(False, "--mcp", help="Serve MCP over stdin/stdout instead of HTTP (the HTTP server "
                             "serves MCP at /mcp)."),
    max_body_bytes: int = typer.Option(LIM.max_body_bytes, "--max-body-bytes", help="Largest request body (and "
                                       "URL plus headers)."),
    max_query_tokens: int = typer.Option(LIM.max_query_tokens, "--max-query-tokens", help="Longest query, in the "
                                         "index tokenizer's tokens."),
    max_queries: int = typer.Option(LIM.max_queries, "--max-queries", help="Queries in one search request."),
    max_k: int = typer.Option(LIM.max_k, "--max-k", help="Most hits per query."),
    request_timeout: float = typer.Option(LIM.request_timeout_s, "--request-timeout", help="Seconds a search may "
                                          "take (then 503)."),
    body_timeout: float = typer.Option(LIM.body_timeout_s, "--body-timeout", help="Seconds to wait for the next "
                                       "part of a request body (then 408)."),
    max_queue: int = typer.Option(LIM.max_queue, "--max-queue", help="Requests waiting for the encoder (more: "
                                  "503 with Retry-After)."),
    max_eval_queries: int = typer.Option(LIM.max_eval_queries, "--max-eval-queries", help="Queries the MCP "
                                         "evaluate tool runs or scores in one call."),
    max_batch: int = typer.Option(BAT.max_batch, "--max-batch", help="Queries per encoder pass."),
    max_wait_ms: float = typer.Option(BAT.max_wait_ms, "--max-wait-ms", help="Longest wait for more queries to "
                                      "join a batch."),
    access_log: bool = typer.Option(SRV.access_log, "--access-log/--no-access-log", help="One line per request "
                                    "on stderr."),
    threads: int | None = THREADS,
) -> None:
    """Serve index folders over HTTP (Anserini's REST API, batched search, /metrics, /docs, MCP at /mcp) or
    MCP over stdio. Loopback only unless a bearer token is set; SIGHUP (or POST /admin/reload) reloads the
    folders without downtime; SIGTERM drains and exits 0."""
    # idle encoder threads sleep instead of spinning: the event loop and the clients share the cores with them
    # (torch's OpenMP reads this when it starts; ONNX Runtime sessions follow it too); OMP_WAIT_POLICY=ACTIVE wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    set_threads(threads)
    limits = Limits(max_body_bytes=max_body_bytes, max_query_tokens=max_query_tokens, max_queries=max_queries,
                    max_k=max_k, request_timeout_s=request_timeout, body_timeout_s=body_timeout, max_queue=max_queue,
                    max_eval_queries=max_eval_queries)
    config = ServeConfig(indexes=index_specs(index_dirs, bm25_dirs), host=host, port=port, token_file=token_file,
                         mcp_stdio=mcp, limits=limits,
                         batch=BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms), access_log=access_log)
    from .serving.server import serve

    serve(config)


bm25_app = typer.Typer(help="Lucene BM25 through pyserini (k1 0.9, b 0.4), the BEIR reference baseline.",
                       no_args_is_help=True)
app.add_typer(bm25_app, name="bm25")


@bm25_app.command("index")
@user_errors
def bm25_index(
    dataset: str = typer.Argument(..., help="Dataset name or BEIR folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Lucene index folder to create."),
    threads: int = typer.Option(BM25Config.threads, "--threads"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Build a Lucene index of title + text."""
    LuceneBM25.build(BeirDataset.open(dataset), output, threads, overwrite)
    typer.echo(f"indexed {dataset} -> {output}")


@bm25_app.command("search")
@user_errors
def bm25_search(
    index_dir: Path = typer.Option(..., "--index", "-i"),
    queries: str = typer.Option(..., "--queries", "-q", help="Queries file (.jsonl or .tsv) or dataset name."),
    output: Path = typer.Option(..., "--output", "-o", help="TREC run file to write."),
    k: int = typer.Option(DEFAULT_DEPTH, "-k"),
    split: str | None = SPLIT,
    k1: float = typer.Option(BM25Config.k1),
    b: float = typer.Option(BM25Config.b),
    threads: int = typer.Option(BM25Config.threads, "--threads"),
    drop_self_hits: bool | None = SELF_HITS,
) -> None:
    """Search a Lucene index; write a TREC run."""
    run = bm25_search_to_trec(index_dir, queries, output, k, split, BM25Config(k1=k1, b=b, threads=threads),
                              drop_self_hits)
    typer.echo(f"searched {len(run)} queries -> {output}")


def recipe_default(name: str) -> str:
    """An option's default and what each recipe sets it to, for its --help line."""
    from .training.config import RECIPES

    sets = "; ".join(f"--recipe {r}: {v[name]}" for r, v in RECIPES.items() if name in v)
    return f"default {getattr(TRN, name, None)}" + (f"; {sets}" if sets else "")


@app.command("train")
@user_errors
def train_command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the trained sentence-transformers model."),
    model: str = MODEL,
    recipe: str | None = typer.Option(None, help="A preset of training options; explicit options override it. "
                                      "paper: the SB-MoE paper's recipe (lr 1e-4 for the head and 1e-6 for the "
                                      "encoder, AdamW weight decay 0.01, constant lr, no clipping, batch 64, 30 "
                                      "epochs, in-batch negatives only, temperature 1, no normalisation, length "
                                      "512, E = 6, its gate, no balance loss, last epoch kept)."),
    data: str = typer.Option(TRN.data, help="BEIR dataset (its --split gives queries and positives) or a "
                             "triples or pairs file (.tsv query/positive(/negative) or .jsonl; MS MARCO id "
                             "triples qid/pos_pid/neg_pid with --collection and --queries-file), read as a stream."),
    split: str = typer.Option(TRN.split),
    negatives: str | None = typer.Option(None, help="With a BEIR dataset: mined (one hard negative per pair, "
                                         "mined with the base model) | none (in-batch negatives only); "
                                         + recipe_default("negatives") + "."),
    collection: Path | None = typer.Option(TRN.collection, help="MS MARCO collection.tsv (pid<TAB>passage) "
                                           "for id triples."),
    queries_file: Path | None = typer.Option(TRN.queries_file, help="MS MARCO queries.train.tsv (qid<TAB>query) "
                                             "for id triples."),
    shuffle_buffer: int = typer.Option(TRN.shuffle_buffer, help="Rows of a triples file shuffled together "
                                       "(memory: one buffer of rows)."),
    moe: str | None = typer.Option(None, help=f"SB-MoE inference routing: {' | '.join(MOE_CHOICES)} (none: no "
                                   "head); " + recipe_default("moe") + "."),
    gate: str | None = typer.Option(None, help=f"How the gate is trained: {' | '.join(GATES)} (paper: its router "
                                    "gets no gradient under top-1); " + recipe_default("gate") + "."),
    experts: int | None = typer.Option(None, help="Number of experts E; " + recipe_default("experts") + "."),
    latent: int | None = typer.Option(None, help="Expert bottleneck size (default d/2)."),
    separate_heads: bool | None = typer.Option(None, "--separate-heads/--shared-head",
                                               help="One head for queries, one for documents (default: shared)."),
    head_side: str | None = typer.Option(None, help="both (the head encodes queries and documents) | query "
                                         "(documents keep the base model's embeddings, so an existing index "
                                         "serves); " + recipe_default("head_side") + "."),
    freeze_router: bool = typer.Option(False, "--freeze-router", help="Keep the router at its initialisation."),
    aux_loss_weight: float | None = typer.Option(None, help="Weight of the Switch load-balancing loss (default: "
                                                 "0.05 for trainable gates, else 0)."),
    router_lr_scale: float | None = typer.Option(None, help="Learning rate of a trainable router, as a multiple "
                                                 "of --lr; " + recipe_default("router_lr_scale") + "."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate of the head (and of the encoder unless "
                                    "--encoder-lr); " + recipe_default("lr") + "."),
    encoder_lr: float | None = typer.Option(None, "--encoder-lr", help="Learning rate of the encoder (default: "
                                            "--lr; --recipe paper: 1e-06, lr/100)."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay; " + recipe_default("weight_decay")
                                              + "."),
    scheduler: str | None = typer.Option(None, help="linear (decay to 0) | constant; "
                                         + recipe_default("scheduler") + "."),
    max_grad_norm: float | None = typer.Option(None, help="Gradient clipping norm, 0 for none; "
                                               + recipe_default("max_grad_norm") + "."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help=recipe_default("batch_size") + "."),
    micro_batch_tokens: int | None = typer.Option(None, help="Encode each batch in length-sorted micro-batches "
                                                  "of about this many tokens, with the same gradients (memory "
                                                  "and padding bounded); 0: one padded batch; "
                                                  + recipe_default("micro_batch_tokens") + "."),
    precision: str = typer.Option(TRN.precision, help="fp32 | bf16: the encoder's forward and backward under "
                                  "bfloat16 autocast in the micro-batched step (weights, head and loss stay "
                                  "float32); faster on GPUs and on CPUs with AMX."),
    epochs: float | None = typer.Option(None, help=recipe_default("epochs") + "."),
    max_steps: int = typer.Option(TRN.max_steps, help="Stop after this many steps (overrides epochs)."),
    max_length: int | None = typer.Option(None, "--max-length", help=recipe_default("max_length") + "."),
    temperature: float | None = typer.Option(None, help="Softmax temperature (default 1, or 0.05 for "
                                             "L2-normalized models; --recipe paper: 1)."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize embeddings "
                                          "(default: the model's own; --recipe paper: no)."),
    keep: str | None = typer.Option(None, help="best (the best dev nDCG@10 checkpoint) | last; "
                                    + recipe_default("keep") + "."),
    seed: int = typer.Option(TRN.seed),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the head, on cached "
                                        "base embeddings."),
    dev_fraction: float = typer.Option(TRN.dev_fraction, help="Share of training queries held out for dev nDCG@10."),
    dev_max_rows: int = typer.Option(TRN.dev_max_rows, help="At most this many triples-file rows held out."),
    dev_split: str | None = typer.Option(TRN.dev_split, help="Dev queries from this split of the BEIR dataset "
                                         "(the same for every seed) instead of --dev-fraction of the training ones."),
    eval_steps: int | None = typer.Option(None, help="Evaluate and checkpoint every N steps (default: each epoch)."),
    save_steps: int | None = typer.Option(TRN.save_steps, help="Checkpoint every N steps (default: --eval-steps; "
                                          "a multiple of it when there is a dev set)."),
    patience: int | None = typer.Option(None, help="Early stopping after N evaluations without improvement."),
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Fine-tune an encoder with (or without) the SB-MoE head; rerun the same command to resume."""
    set_threads(threads)
    config = TRN.from_recipe(recipe, **given(
        model=model, output=output, data=data, split=split, negatives=negatives, collection=collection,
        queries_file=queries_file, shuffle_buffer=shuffle_buffer, moe=moe, gate=gate, experts=experts, latent=latent,
        separate_heads=separate_heads, head_side=head_side, freeze_router=freeze_router,
        aux_loss_weight=aux_loss_weight, router_lr_scale=router_lr_scale, lr=lr, encoder_lr=encoder_lr,
        weight_decay=weight_decay, scheduler=scheduler, max_grad_norm=max_grad_norm, batch_size=batch_size,
        micro_batch_tokens=micro_batch_tokens, precision=precision, epochs=epochs, max_steps=max_steps,
        max_length=max_length,
        temperature=temperature, normalize=normalize, keep=keep, seed=seed, freeze_encoder=freeze_encoder,
        dev_fraction=dev_fraction, dev_max_rows=dev_max_rows, dev_split=dev_split, eval_steps=eval_steps,
        save_steps=save_steps, patience=patience, show_progress=progress(), overwrite=overwrite))
    from .training.trainer import train

    saved = train(config)
    if is_main():
        typer.echo(f"saved {saved}")


expert_app = typer.Typer(help="Domain experts: query-side LoRA adapters on one frozen base encoder, and a routed "
                         "model that sends each query to one (documents keep the base model's embeddings).",
                         no_args_is_help=True)
app.add_typer(expert_app, name="expert")
EXP, RTD = ExpertConfig, RoutedConfig


@expert_app.command("train")
@user_errors
def expert_train(
    output: Path = typer.Option(..., "--output", "-o", help="Expert folder to write (adapter files, expert.json)."),
    data: str = typer.Option(",".join(EXP.data), "--data", help="BEIR dataset(s), comma-separated: several make "
                             "one multi-task expert on their union."),
    model: str = MODEL,
    split: str = typer.Option(EXP.split, help="qrels split of the training queries."),
    kind: str = typer.Option(EXP.kind, help=f"{' | '.join(EXPERT_KINDS)}: LoRA in the encoder's query pass, or a "
                             "residual map on the pooled query embedding (trains on cached embeddings)."),
    rank: int = typer.Option(EXP.rank, help="LoRA rank (or the pooled map's)."),
    alpha: int = typer.Option(EXP.alpha, help="LoRA alpha."),
    lr: float = typer.Option(EXP.lr, "--lr"),
    epochs: int = typer.Option(EXP.epochs, help="Epochs; each ends with dev nDCG@10, and the best epoch is kept."),
    max_steps: int = typer.Option(EXP.max_steps, help="Stop after this many steps (0: the epochs decide)."),
    batch_size: int = typer.Option(EXP.batch_size, "--batch-size", "-b"),
    temperature: float | None = typer.Option(None, help="Softmax temperature (default: 0.05 for cosine models, 1 "
                                             "for dot)."),
    negatives: str = typer.Option(EXP.negatives, help="mined (one per query, base model) | none."),
    max_queries: int = typer.Option(EXP.max_queries, help="At most this many training queries per dataset (0: all)."),
    seed: int = typer.Option(EXP.seed),
    name: str | None = typer.Option(None, help="The expert's name (default: the datasets)."),
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Train a query-side expert against the base model's document embeddings; rerun to resume."""
    from .experts.trainer import train_expert

    set_threads(threads)
    config = ExpertConfig(model=model, data=tuple(split_list(data)), output=output, split=split, kind=kind, rank=rank,
                          alpha=alpha, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                          temperature=temperature, negatives=negatives, max_queries=max_queries, seed=seed, name=name,
                          show_progress=progress(), overwrite=overwrite)
    typer.echo(f"saved {train_expert(config)}")


@expert_app.command("route")
@user_errors
def expert_route(
    experts: list[str] = typer.Argument(..., help="NAME=FOLDER of each expert (from `sbmoe expert train`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Routed model folder to write."),
    mode: str = typer.Option(RTD.mode, help=f"{' | '.join(ROUTING_MODES)}."),
    pilots: int = typer.Option(RTD.pilots_per_expert, help="k-means pilots per expert."),
    routing_queries: int = typer.Option(RTD.routing_queries, help="Training queries per domain the routing is "
                                        "built from."),
    seed: int = typer.Option(RTD.seed),
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Build a routed model (base encoder + experts + routing tables) that index, search and eval load like any
    model; an index built with the base model serves it."""
    from .experts.build import build_routed_model

    set_threads(threads)
    named = {}
    for entry in experts:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"expert {entry!r}: give NAME=FOLDER")
        named[name] = Path(folder)
    config = RoutedConfig(experts=named, output=output, mode=mode, pilots_per_expert=pilots,
                          routing_queries=routing_queries, seed=seed, overwrite=overwrite)
    typer.echo(f"saved {build_routed_model(config)}")


lm_app = typer.Typer(help="The tiny MoE language-model testbed (sbmoe.lm): layer-local MoE or ReXMoE with PSR, "
                     "trained on SciFact abstracts, evaluated on held-out abstracts and WikiText-2.",
                     no_args_is_help=True)
app.add_typer(lm_app, name="lm")


@lm_app.command("train")
@user_errors
def lm_train(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for checkpoint.pt and tokenizer.json."),
    pool: str = typer.Option(LM.pool, help="local | group (ReXMoE) | sliding"),
    reuse: int = typer.Option(LM.reuse, help="r: adjacent layers whose experts a router may choose."),
    psr: str = typer.Option(LM.psr_schedule, help="Progressive scaling routing schedule: none | linear | step."),
    psr_fraction: float = typer.Option(PSR_FRACTION, help="Share of training over which PSR unmasks non-local "
                                      "experts (with --psr)."),
    steps: int = typer.Option(LMT.steps),
    batch_size: int = typer.Option(LMT.batch_size, "--batch-size", "-b"),
    seq_len: int = typer.Option(LM.seq_len, "--seq-len"),
    vocab: int = typer.Option(LM.vocab_size, help="BPE vocabulary size (tokenizer trained on the training split)."),
    layers: int = typer.Option(LM.n_layer),
    d_model: int = typer.Option(LM.d_model, "--d-model"),
    experts: int = typer.Option(LM.experts_per_layer, help="Experts per layer (E)."),
    expert_hidden: int = typer.Option(LM.expert_hidden, "--expert-hidden"),
    top_k: int = typer.Option(LM.top_k, "--top-k"),
    lr: float = typer.Option(LMT.lr, "--lr"),
    eval_every: int = typer.Option(LMT.eval_every, "--eval-every"),
    seed: int = typer.Option(LMT.seed),
    pregate: bool = typer.Option(LM.pregate, "--pregate/--no-pregate",
                                 help="Pre-gated MoE: block l's experts are chosen from block l-1's MoE input."),
    until_converged: bool = typer.Option(LMT.stop_on_convergence, "--until-converged/--all-steps",
                                         help="Stop once validation PPL improved < 1% over the last 20% of steps "
                                         "(--steps is then the cap)."),
    min_steps: int = typer.Option(LMT.min_steps, "--min-steps", help="No convergence stop before this step."),
    init_from: Path | None = typer.Option(LMT.init_from, "--init-from",
                                          help="Start from this run folder's weights and tokenizer (e.g. convert a "
                                          "trained baseline with --pregate and fine-tune)."),
    device: str = typer.Option(LMT.device, help="Where the model trains: cpu, or cuda on a GPU."),
    corpus: str = typer.Option(LMT.corpus, help=f"Training text: {' | '.join(CORPORA)}."),
    final_eval_tokens: int = typer.Option(LMT.final_eval_tokens, "--final-eval-tokens",
                                          help="Final perplexities over this many tokens of each split (0: all; "
                                          "`lm eval` reuses it)."),
    threads: int | None = THREADS,
) -> None:
    """Train (or resume: rerun the same command) a tiny MoE LM; prints the final perplexities."""
    from .lm.train import train_and_evaluate

    set_threads(threads)
    model_config = LMConfig(vocab_size=vocab, seq_len=seq_len, n_layer=layers, d_model=d_model,
                            experts_per_layer=experts, expert_hidden=expert_hidden, top_k=top_k, pool=pool,
                            reuse=reuse, psr_schedule=psr, psr_fraction=psr_fraction if psr != "none" else 0.0,
                            pregate=pregate)
    echo_lm_figures(train_and_evaluate(LMTrainConfig(model=model_config, steps=steps, batch_size=batch_size, lr=lr,
                                                     eval_every=eval_every, seed=seed, output=output,
                                                     show_progress=progress(), stop_on_convergence=until_converged,
                                                     min_steps=min_steps, init_from=init_from, device=device,
                                                     corpus=corpus, final_eval_tokens=final_eval_tokens)))


@lm_app.command("eval")
@user_errors
def lm_eval(
    output: Path = typer.Argument(..., help="Folder written by `sbmoe lm train`."),
    threads: int | None = THREADS,
) -> None:
    """Perplexity of a trained LM on its corpus's held-out split and WikiText-2, with routing statistics."""
    from .lm.train import evaluate_saved

    set_threads(threads)
    echo_lm_figures(evaluate_saved(output))


def echo_lm_figures(figures: dict) -> None:
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else " ".join(f"{v:.3g}" for v in value)
        typer.echo(f"{key:<24} {shown}")


QNT = QuantConfig()


@app.command("quantize")
@user_errors
def quantize_command(
    model: Path = typer.Argument(..., help="An SB-MoE sentence-transformers folder or an `sbmoe lm train` folder."),
    output: Path = typer.Argument(..., help="Folder to write (same form as MODEL, plus packed.pt)."),
    bits: float = typer.Option(QNT.bits, help="Width for rtn/gptq (1-8); average-bits budget for mxmoe."),
    method: str = typer.Option(QNT.method, help=f"{' | '.join(QUANT_METHODS)}"),
    group_size: int = typer.Option(QNT.group_size, "--group-size", help="Input rows per scale/zero group."),
    candidates: str = typer.Option(",".join(map(str, QNT.candidates)), help="mxmoe: widths a block may get."),
    quantizer: str = typer.Option(QNT.mxmoe_quantizer, help="mxmoe: rtn | gptq behind the chosen widths."),
    weight: float = typer.Option(QNT.weight, help="mxmoe: accuracy/performance weight r (1: accuracy only)."),
    granularity: str = typer.Option(QNT.granularity, help="mxmoe: linear | expert (one width per expert)."),
    attention: bool = typer.Option(QNT.attention, "--attention/--no-attention", help="LM: quantise attention."),
    calib_tokens: int = typer.Option(QNT.calib_tokens, "--calib-tokens", help="LM calibration tokens."),
    calib_texts: int = typer.Option(QNT.calib_texts, "--calib-texts", help="Retriever calibration documents."),
    calib_data: str = typer.Option(QNT.calib_data, "--calib-data", help="Retriever calibration corpus."),
    seed: int = typer.Option(QNT.seed, help="Seed of the calibration sample."),
    act_order: bool = typer.Option(QNT.act_order, "--act-order", help="GPTQ: rows by decreasing Hessian diagonal."),
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Post-training quantisation (RTN, GPTQ, or MxMoE mixed precision) of a saved model."""
    set_threads(threads)
    config = QuantConfig(bits=bits, method=method, group_size=group_size,
                         candidates=tuple(int(c) for c in split_list(candidates)), mxmoe_quantizer=quantizer,
                         weight=weight, granularity=granularity, attention=attention, calib_tokens=calib_tokens,
                         calib_texts=calib_texts, calib_data=calib_data, seed=seed, act_order=act_order)
    from .models.quantize import quantize_model

    report = quantize_model(model, output, config, overwrite)
    typer.echo(f"quantized {report['blocks']} blocks ({report['quantized_parameters']:,} parameters) to "
               f"{report['average_bits']:.3f} average bits -> {output}")


if __name__ == "__main__":  # pragma: no cover
    app()
