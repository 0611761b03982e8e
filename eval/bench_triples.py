"""Peak memory of ``sbmoe train`` on MS MARCO-sized triples files (streamed, never loaded whole).

    python eval/bench_triples.py [--rows 10000000] [--steps 20] [--model tiny] [--work-dir DIR]

Generates, in ``--work-dir`` (default: a temporary folder, removed at the end), a text triples file of
``--rows`` rows (``query<TAB>positive<TAB>negative``; a block of 100,000 distinct rows written over and
over, so that generating 5 GB is I/O rather than string formatting: the reader cannot tell) and the MS
MARCO id variant (``qid<TAB>pos_pid<TAB>neg_pid`` plus ``collection.tsv`` with ``--passages`` passages and
``queries.train.tsv``). ``--model tiny`` (default) is a random 2-layer, 32-d BERT with MiniLM's tokenizer,
built in the work folder, so that the figure is the data pipeline's and the libraries', not a big model's.
Each variant is one cell: ``sbmoe train`` runs ``--steps`` steps on it in a child
process (the line indexes are built on its first open, inside that process), and the child's peak RSS
(``ru_maxrss``) is recorded. A third cell, ``floor``, trains the same way on the file's first 10,000 rows:
the memory of the model, optimizer and libraries, so ``text_triples - floor`` is what the 10M rows cost.
Cells already in the results file are skipped (``--force`` reruns them).
Writes ``eval/results/bench_triples.json`` (or ``--output``); target: peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sbmoe.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MB = 1536
FLOOR_ROWS = 10_000
BLOCK = 100_000
WORDS = ["protein", "cell", "gene", "virus", "cancer", "brain", "heart", "lung", "liver", "blood", "bone", "skin",
         "drug", "dose", "trial", "mouse", "enzyme", "receptor", "insulin", "glucose", "immune", "tumor", "neuron",
         "muscle", "kidney", "vaccine", "antibody", "plasma", "river", "stone", "cloud", "forest", "ember", "frost",
         "meadow", "canyon", "harbor", "signal", "market", "policy"]

CHILD = """
import json, resource, sys, time
from sbmoe.cli import app
start = time.time()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("BENCH " + json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                 "seconds": time.time() - start}), flush=True)
"""


def sentence_pool(rng: random.Random, size: int, words: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=words)) for _ in range(size)]


def write_lines(path: Path, count: int, line, block: int = BLOCK, repeat: bool = False) -> None:
    """``line(i)`` for i in range(count), written in blocks (generation never holds the file in memory);
    with ``repeat`` the first block's text is written again and again."""
    with open(path, "w", encoding="utf-8") as handle:
        first = None
        for start in range(0, count, block):
            size = min(block, count - start)
            if repeat and first is not None:
                handle.write(first if size == block else "".join(line(i) for i in range(size)))
                continue
            text = "".join(line(i) for i in range(start, start + size))
            first = first or text
            handle.write(text)


def tiny_model(work: Path) -> str:
    """A random 2-layer, 32-d BERT with all-MiniLM-L6-v2's tokenizer (offline)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sbmoe.models.light_encoders import minilm_path

    out = work / "tiny-bert"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
        BertModel(config).save_pretrained(out)
        tokenizer.model_max_length = 128
        tokenizer.save_pretrained(out)
    return str(out)


def generate(work: Path, rows: int, passages: int, queries: int, seed: int) -> dict[str, Path]:
    """Both variants; texts are made unique by their row/id number so that nothing can be deduplicated."""
    rng = random.Random(seed)
    short, long = sentence_pool(rng, 4096, 6), sentence_pool(rng, 4096, 40)
    paths = {"text": work / "triples.tsv", "ids": work / "qidpidtriples.tsv", "collection": work / "collection.tsv",
             "queries": work / "queries.train.tsv"}
    paths["floor"] = work / "floor.tsv"
    if not paths["text"].exists():
        def text_line(i: int) -> str:
            return f"q{i} {short[i % 4096]}\tp{i} {long[i % 4093]}\tn{i} {long[(i * 7) % 4091]}\n"

        write_lines(paths["text"], rows, text_line, repeat=True)
        write_lines(paths["floor"], min(rows, FLOOR_ROWS), text_line)
    if not paths["collection"].exists():
        write_lines(paths["collection"], passages, lambda i: f"{i}\tpassage {i} {long[i % 4093]}\n")
        write_lines(paths["queries"], queries, lambda i: f"{i}\tquery {i} {short[i % 4096]}\n")
        write_lines(paths["ids"], rows, lambda i: f"{i % queries}\t{(i * 7919) % passages}\t"
                                                   f"{(i * 104729 + 13) % passages}\n", repeat=True)
    return paths


def train_cell(data: list[str], work: Path, name: str, args: argparse.Namespace) -> dict:
    """One ``sbmoe train`` child process; its peak RSS and wall time."""
    out = work / f"model-{name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}-checkpoints", ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD, "train", "--model", args.model, *data, "--moe", "top1", "-o", str(out),
           "-b", str(args.batch_size), "--max-length", str(args.max_length), "--max-steps", str(args.steps),
           "--eval-steps", str(args.steps), "--dev-max-rows", "200", "--shuffle-buffer", str(args.shuffle_buffer),
           "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SBMOE_CACHE": str(work / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    figures = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not figures:
        raise RuntimeError(f"{name}: sbmoe train failed:\n{done.stderr[-3000:]}")
    return {**figures[0], "steps": args.steps, "within_target": figures[0]["peak_rss_mb"] <= TARGET_MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--passages", type=int, default=8_841_823, help="collection size (MS MARCO's)")
    parser.add_argument("--queries", type=int, default=502_939, help="training queries (MS MARCO's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--shuffle-buffer", type=int, default=100_000)
    parser.add_argument("--model", default="tiny", help="tiny (a random 2-layer BERT), an alias or a folder")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work-dir", type=Path, default=None, help="keep generated files here (default: temp)")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_triples.json")
    parser.add_argument("--force", action="store_true", help="rerun cells already in the results file")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-triples-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.output.read_text()) if args.output.exists() and not args.force else {}
    if results.get("rows") not in (None, args.rows):
        results = {}
    try:
        start = time.time()
        paths = generate(work, args.rows, args.passages, args.queries, seed=0)
        model_name = args.model
        if args.model == "tiny":
            args.model = tiny_model(work)
        print(f"generated in {time.time() - start:.0f} s: " + ", ".join(
            f"{p.name} {p.stat().st_size / 2**20:.0f} MB" for p in paths.values()), flush=True)
        cells = {"floor": ["--data", str(paths["floor"])], "text_triples": ["--data", str(paths["text"])],
                 "id_triples": ["--data", str(paths["ids"]), "--collection", str(paths["collection"]),
                                "--queries-file", str(paths["queries"])]}
        for name, data in cells.items():
            if name in results.get("cells", {}):
                print(f"{name}: done already ({results['cells'][name]['peak_rss_mb']:.0f} MB)")
                continue
            cell = train_cell(data, work, name, args)
            results = {**results, "rows": args.rows, "passages": args.passages, "queries": args.queries,
                       "target_mb": TARGET_MB, "model": model_name, "batch_size": args.batch_size,
                       "max_length": args.max_length, "shuffle_buffer": args.shuffle_buffer,
                       "file_mb": {k: round(p.stat().st_size / 2**20, 1) for k, p in paths.items()},
                       "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
                       "cells": {**results.get("cells", {}), name: cell}}
            write_json(args.output, results)
            print(f"{name}: peak RSS {cell['peak_rss_mb']:.0f} MB over {args.steps} steps "
                  f"({cell['seconds']:.0f} s, target <= {TARGET_MB} MB)", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
