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
from .evaluation import DEFAULT_METRICS, MetricError, evaluate_systems, format_metric_table
from .retrievers.encoder import EncoderConfig, ModelLoadError, set_threads
from .retrievers.index import IndexMismatchError
from .retrievers.retriever import IndexConfig, Retriever, build_index, dense_system
from .retrievers.training import MOE_CHOICES, TrainConfig, train
from .runs import write_trec_run

app = typer.Typer(help="Dense retrieval with a single-block MoE head: train, index, search, evaluate.",
                  no_args_is_help=True, add_completion=False)

USER_ERRORS = (DataFormatError, DatasetNotFoundError, ModelLoadError, IndexMismatchError, MetricError,
               FileExistsError, FileNotFoundError, ValueError)

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
    factory: str = typer.Option("Flat", help="faiss index-factory string."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
) -> None:
    """Encode a corpus into a FAISS index folder (index.faiss, doc_ids.txt, meta.json)."""
    set_threads(threads)
    config = IndexConfig(dataset=dataset, output=output, factory=factory, use_cache=not no_cache,
                         overwrite=overwrite,
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
    batch_size: int = BATCH,
    threads: int | None = THREADS,
) -> None:
    """Search an index with a queries file or a dataset's queries; write a TREC run."""
    set_threads(threads)
    drop_self_hits = False
    if Path(queries).is_file():
        query_texts = read_queries(Path(queries))
    else:
        dataset = BeirDataset.open(queries)
        query_texts, _ = dataset.load_split(split)
        drop_self_hits = dataset.drop_self_hits
    retriever = Retriever.from_index(index_dir, EncoderConfig(model=model, batch_size=batch_size) if model else None)
    retriever.batch_size = batch_size
    run = retriever.search(query_texts, k=k, drop_self_hits=drop_self_hits)
    write_trec_run(run, output, tag=f"sbmoe-{Path(retriever.index.meta.model).name}")
    typer.echo(f"searched {len(run)} queries -> {output}")


@app.command("eval")
@user_errors
def evaluate(
    model: str = MODEL,
    datasets: str = typer.Option("scifact", "--datasets", "-d", help="Comma-separated dataset names or folders."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), help="Comma-separated ir-measures names."),
    split: str | None = typer.Option(None, help="qrels split (default: the dataset's test split)."),
    output_dir: Path = typer.Option(Path("results"), "--output-dir", help="Where runs and eval.json go."),
    pooling: str | None = POOLING,
    max_length: int | None = MAX_LENGTH,
    normalize: bool | None = NORMALIZE,
    batch_size: int = BATCH,
    device: str | None = DEVICE,
    threads: int | None = THREADS,
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
) -> None:
    """Zero-shot evaluation on BEIR datasets: prints a datasets x metrics table, writes runs and JSON."""
    set_threads(threads)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    dataset_names = [d.strip() for d in datasets.split(",") if d.strip()]
    config = encoder_config(model, pooling, max_length, normalize, batch_size, device)
    systems = {model: dense_system(config, use_cache=not no_cache, show_progress=sys.stderr.isatty())}
    report = evaluate_systems(systems, dataset_names, metric_names, split, output_dir)
    typer.echo(f"model: {model}")
    typer.echo(format_metric_table(report, model))
    typer.echo(f"results: {output_dir / 'eval.json'}")


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


if __name__ == "__main__":  # pragma: no cover
    app()
