"""The ``sbmoe`` command: a thin typer layer over the Python API. Every failure is one line on stderr."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from .data import BeirDataset, DataFormatError, DatasetNotFoundError, read_queries
from .evaluation import (
    DEFAULT_METRICS,
    MetricError,
    evaluate_systems,
    format_leaderboard,
    format_metric_table,
    write_leaderboard,
)
from .fusion import FUSIONS, fuse
from .retrievers.bm25 import BM25Config, BM25UnavailableError, LuceneBM25, bm25_system
from .retrievers.encoder import EncoderConfig, ModelLoadError, set_threads
from .retrievers.index import IndexMismatchError, factory_string
from .retrievers.retriever import IndexConfig, Retriever, build_index, dense_system
from .retrievers.shards import ShardError
from .retrievers.training import MOE_CHOICES, TrainConfig, train
from .runs import write_trec_run

app = typer.Typer(help="Dense retrieval with a single-block MoE head: train, index, search, evaluate.",
                  no_args_is_help=True, add_completion=False)

USER_ERRORS = (DataFormatError, DatasetNotFoundError, ModelLoadError, IndexMismatchError, MetricError,
               ShardError, BM25UnavailableError, FileExistsError, FileNotFoundError, ValueError)

F = TypeVar("F", bound=Callable[..., Any])


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
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar; ours stay


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def encoder_config(model: str, pooling: str | None, max_length: int | None, normalize: bool | None,
                   batch_size: int, device: str | None) -> EncoderConfig:
    return EncoderConfig(model=model, pooling=pooling, max_length=max_length, normalize=normalize,
                         batch_size=batch_size, device=device)


MODEL = typer.Option("minilm", "--model", "-m", help="Alias (minilm, tinybert, bert-small, bert-base, "
                     "contriever), Hugging Face id, or local model folder.")
POOLING = typer.Option(None, help="mean | cls | max (default: the model's own).")
MAX_LENGTH = typer.Option(None, "--max-length", help="Truncate inputs to this many tokens.")
NORMALIZE = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize embeddings.")
BATCH = typer.Option(64, "--batch-size", "-b")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1, ...")
THREADS = typer.Option(None, "--threads", help="torch CPU threads.")


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
    threads: int | None = THREADS,
    index_type: str = typer.Option("flat", "--index-type", help="flat | hnsw | ivf | ivfpq"),
    factory: str | None = typer.Option(None, help="A raw faiss index-factory string (overrides --index-type)."),
    hnsw_m: int = typer.Option(32, "--hnsw-m", help="HNSW graph degree M."),
    ef_construction: int | None = typer.Option(None, "--ef-construction", help="HNSW build-time beam."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW search-time beam (stored)."),
    nlist: int = typer.Option(1024, help="IVF lists."),
    nprobe: int | None = typer.Option(None, help="IVF lists searched (stored)."),
    pq_m: int = typer.Option(48, "--pq-m", help="PQ sub-quantizers (must divide the dimension)."),
    chunk_size: int = typer.Option(50_000, "--chunk-size", help="Documents per on-disk shard."),
    shard_dtype: str = typer.Option("float32", "--shard-dtype", help="float32 | float16"),
    devices: str | None = typer.Option(None, help="Encode on several devices: cuda:0,cuda:1 or cpu,cpu."),
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Keep <output>.shards after success."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
) -> None:
    """Encode a corpus into a FAISS index folder (index.faiss, doc_ids.txt, meta.json).

    Encoding streams the corpus into shards beside the output; rerun the same command after a kill and
    it resumes from the last complete shard.
    """
    set_threads(threads)
    build_params = {"efConstruction": ef_construction} if ef_construction else {}
    search_params = {k: v for k, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}
    config = IndexConfig(dataset=dataset, output=output,
                         factory=factory or factory_string(index_type, hnsw_m, nlist, pq_m),
                         build_params=build_params, search_params=search_params, chunk_size=chunk_size,
                         shard_dtype=shard_dtype, devices=tuple(split_list(devices)), keep_shards=keep_shards,
                         use_cache=not no_cache, overwrite=overwrite,
                         encoder=encoder_config(model, pooling, max_length, normalize, batch_size, device))
    built = build_index(config)
    typer.echo(f"indexed {built.meta.count} documents ({built.meta.dim}-d, {built.meta.factory}) -> {output}")


@app.command()
@user_errors
def search(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index folder from `sbmoe index`."),
    queries: str = typer.Option(..., "--queries", "-q", help="Queries file (.jsonl or .tsv) or dataset name."),
    output: Path = typer.Option(..., "--output", "-o", help="TREC run file to write."),
    k: int = typer.Option(100, "-k", help="Hits per query."),
    split: str | None = typer.Option(None, help="With a dataset name: the qrels split whose queries to run."),
    model: str | None = typer.Option(None, "--model", "-m", help="Encoder (default: the one in meta.json)."),
    nprobe: int | None = typer.Option(None, help="IVF lists to search (overrides meta.json)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW search beam (overrides meta.json)."),
    batch_size: int = BATCH,
    threads: int | None = THREADS,
) -> None:
    """Search an index with a queries file or a dataset's queries; write a TREC run."""
    set_threads(threads)
    query_texts, drop_self_hits = load_query_texts(queries, split)
    retriever = Retriever.from_index(index_dir, EncoderConfig(model=model, batch_size=batch_size) if model else None)
    retriever.batch_size = batch_size
    retriever.index.apply_search_params({k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v})
    run = retriever.search(query_texts, k=k, drop_self_hits=drop_self_hits)
    write_trec_run(run, output, tag=f"sbmoe-{Path(retriever.index.meta.model).name}")
    typer.echo(f"searched {len(run)} queries -> {output}")


@app.command("eval")
@user_errors
def evaluate(
    model: str = typer.Option("minilm", "--model", "-m", help="Encoder(s), comma-separated: each is a system."),
    datasets: str = typer.Option("scifact", "--datasets", "-d", help="Comma-separated dataset names or folders."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), help="Comma-separated ir-measures names."),
    bm25: bool = typer.Option(False, "--bm25", help="Add Lucene BM25 (pyserini) as a system."),
    hybrid: str | None = typer.Option(None, help="Fuse the first model with this system (bm25 or a model)."),
    fusion: str = typer.Option("rrf", help=f"Hybrid fusion: {' | '.join(FUSIONS)}."),
    alpha: float = typer.Option(0.5, help="Convex fusion weight of the first model."),
    split: str | None = typer.Option(None, help="qrels split (default: the dataset's test split)."),
    output_dir: Path = typer.Option(Path("results"), "--output-dir", help="Where runs, JSON, markdown and PNG go."),
    pooling: str | None = POOLING,
    max_length: int | None = MAX_LENGTH,
    normalize: bool | None = NORMALIZE,
    batch_size: int = BATCH,
    device: str | None = DEVICE,
    threads: int | None = THREADS,
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
) -> None:
    """Zero-shot evaluation on BEIR datasets: one table per system, and a leaderboard when several run."""
    set_threads(threads)
    metric_names, dataset_names, models = split_list(metrics), split_list(datasets), split_list(model)
    progress = sys.stderr.isatty()
    runs: dict[tuple[str, str], dict] = {}

    def memoized(name: str, retrieve):
        def run(dataset, queries, k):
            if (name, dataset.name) not in runs:
                runs[(name, dataset.name)] = retrieve(dataset, queries, k)
            return runs[(name, dataset.name)]
        return run

    def dense(name: str):
        config = encoder_config(name, pooling, max_length, normalize, batch_size, device)
        return memoized(name, dense_system(config, use_cache=not no_cache, show_progress=progress))

    systems = {name: dense(name) for name in models}
    if bm25 or hybrid == "bm25":
        systems["bm25"] = memoized("bm25", bm25_system(BM25Config(threads=threads or 2)))
    if hybrid:
        other = systems.get(hybrid) or dense(hybrid)
        first = systems[models[0]]
        systems[f"{models[0]}+{hybrid}:{fusion}"] = lambda ds, q, k: fuse(first(ds, q, k), other(ds, q, k),
                                                                         fusion, alpha, depth=k)
    report = evaluate_systems(systems, dataset_names, metric_names, split, output_dir)
    for name in systems:
        typer.echo(f"\nsystem: {name}\n{format_metric_table(report, name)}")
    if len(systems) > 1:
        typer.echo(f"\nleaderboard ({metric_names[0]})\n{format_leaderboard(report, metric_names[0])}")
        write_leaderboard(report, metric_names[0], output_dir)
    typer.echo(f"\nresults: {output_dir / 'eval.json'}")


bm25_app = typer.Typer(help="Lucene BM25 through pyserini (k1 0.9, b 0.4), the BEIR reference baseline.",
                       no_args_is_help=True)
app.add_typer(bm25_app, name="bm25")


@bm25_app.command("index")
@user_errors
def bm25_index(
    dataset: str = typer.Argument(..., help="Dataset name or BEIR folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Lucene index folder to create."),
    threads: int = typer.Option(2, "--threads"),
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
    k: int = typer.Option(100, "-k"),
    split: str | None = typer.Option(None),
    k1: float = typer.Option(0.9),
    b: float = typer.Option(0.4),
    threads: int = typer.Option(2, "--threads"),
) -> None:
    """Search a Lucene index; write a TREC run."""
    query_texts, drop_self_hits = load_query_texts(queries, split)
    run = LuceneBM25(index_dir, BM25Config(k1=k1, b=b, threads=threads)).search(query_texts, k, drop_self_hits)
    write_trec_run(run, output, tag="bm25")
    typer.echo(f"searched {len(run)} queries -> {output}")


def load_query_texts(queries: str, split: str | None) -> tuple[dict[str, str], bool]:
    """Queries from a file, or a dataset's judged queries (then BEIR's self-hit rule applies)."""
    if Path(queries).is_file():
        return read_queries(Path(queries)), False
    dataset = BeirDataset.open(queries)
    return dataset.load_split(split)[0], dataset.drop_self_hits


@app.command("train")
@user_errors
def train_command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the trained sentence-transformers model."),
    model: str = MODEL,
    data: str = typer.Option("scifact", help="BEIR dataset (its --split gives queries and positives) or a "
                             "triples file (.tsv query/positive/negative or .jsonl)."),
    split: str = typer.Option("train"),
    moe: str = typer.Option("top1", help=f"SB-MoE inference routing: {' | '.join(MOE_CHOICES)} (none: no head)."),
    experts: int = typer.Option(6, help="Number of experts E."),
    latent: int | None = typer.Option(None, help="Expert bottleneck size (default d/2)."),
    separate_heads: bool = typer.Option(False, "--separate-heads", help="One head for queries, one for documents."),
    aux_loss_weight: float = typer.Option(0.0, help="Weight of the Switch load-balancing loss."),
    lr: float = typer.Option(1e-4, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    epochs: float = typer.Option(1.0),
    max_steps: int = typer.Option(-1, help="Stop after this many steps (overrides epochs)."),
    max_length: int = typer.Option(256, "--max-length"),
    temperature: float | None = typer.Option(None, help="Softmax temperature (default 1, or 0.05 for "
                                             "L2-normalized models)."),
    seed: int = typer.Option(42),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the head, on cached "
                                        "base embeddings."),
    dev_fraction: float = typer.Option(0.1, help="Share of training queries held out for dev nDCG@10."),
    eval_steps: int | None = typer.Option(None, help="Evaluate and checkpoint every N steps (default: each epoch)."),
    patience: int | None = typer.Option(None, help="Early stopping after N evaluations without improvement."),
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Fine-tune an encoder with (or without) the SB-MoE head; rerun the same command to resume."""
    set_threads(threads)
    config = TrainConfig(model=model, output=output, data=data, split=split, moe=moe, experts=experts,
                         latent=latent, separate_heads=separate_heads, aux_loss_weight=aux_loss_weight, lr=lr,
                         batch_size=batch_size, epochs=epochs, max_steps=max_steps, max_length=max_length,
                         temperature=temperature, seed=seed, freeze_encoder=freeze_encoder,
                         dev_fraction=dev_fraction, eval_steps=eval_steps, patience=patience,
                         show_progress=sys.stderr.isatty(), overwrite=overwrite)
    typer.echo(f"saved {train(config)}")


lm_app = typer.Typer(help="The tiny MoE language-model testbed (sbmoe.lm): layer-local MoE or ReXMoE with PSR, "
                     "trained on SciFact abstracts, evaluated on held-out abstracts and WikiText-2.",
                     no_args_is_help=True)
app.add_typer(lm_app, name="lm")


@lm_app.command("train")
@user_errors
def lm_train(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for checkpoint.pt and tokenizer.json."),
    pool: str = typer.Option("local", help="local | group (ReXMoE) | sliding"),
    reuse: int = typer.Option(1, help="r: adjacent layers whose experts a router may choose."),
    psr: str = typer.Option("none", help="Progressive scaling routing schedule: none | linear | step."),
    psr_fraction: float = typer.Option(0.5, help="Share of training over which PSR unmasks non-local experts."),
    steps: int = typer.Option(500),
    batch_size: int = typer.Option(16, "--batch-size", "-b"),
    seq_len: int = typer.Option(128, "--seq-len"),
    vocab: int = typer.Option(2048, help="BPE vocabulary size (tokenizer trained on the training split)."),
    layers: int = typer.Option(4),
    d_model: int = typer.Option(128, "--d-model"),
    experts: int = typer.Option(8, help="Experts per layer (E)."),
    expert_hidden: int = typer.Option(128, "--expert-hidden"),
    top_k: int = typer.Option(2, "--top-k"),
    lr: float = typer.Option(3e-3, "--lr"),
    eval_every: int = typer.Option(50, "--eval-every"),
    seed: int = typer.Option(0),
    threads: int | None = THREADS,
) -> None:
    """Train (or resume: rerun the same command) a tiny MoE LM; prints the final perplexities."""
    from .lm.data import LMCorpus
    from .lm.model import LMConfig
    from .lm.train import LMTrainConfig, evaluate_final, train_lm

    set_threads(threads)
    corpus = LMCorpus.build(vocab_size=vocab, tokenizer_path=output / "tokenizer.json")
    model_config = LMConfig(vocab_size=corpus.vocab_size, seq_len=seq_len, n_layer=layers, d_model=d_model,
                            experts_per_layer=experts, expert_hidden=expert_hidden, top_k=top_k, pool=pool,
                            reuse=reuse, psr_schedule=psr, psr_fraction=psr_fraction if psr != "none" else 0.0)
    config = LMTrainConfig(model=model_config, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                           seed=seed, output=output, show_progress=sys.stderr.isatty())
    model, _ = train_lm(config, corpus)
    echo_lm_figures(evaluate_final(model, corpus))


@lm_app.command("eval")
@user_errors
def lm_eval(
    output: Path = typer.Argument(..., help="Folder written by `sbmoe lm train`."),
    threads: int | None = THREADS,
) -> None:
    """Perplexity of a trained LM on the held-out SciFact abstracts and WikiText-2, with routing statistics."""
    from .lm.data import LMCorpus
    from .lm.train import evaluate_final, load_trained

    set_threads(threads)
    model, _ = load_trained(output)
    tokenizer = output / "tokenizer.json"
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer}: not found (the model was not trained with `sbmoe lm train`)")
    echo_lm_figures(evaluate_final(model, LMCorpus.build(tokenizer_path=tokenizer)))


def echo_lm_figures(figures: dict) -> None:
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else " ".join(f"{v:.3g}" for v in value)
        typer.echo(f"{key:<24} {shown}")


if __name__ == "__main__":  # pragma: no cover
    app()
