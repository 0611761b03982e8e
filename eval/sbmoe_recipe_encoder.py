"""SB-MoE under the paper's recipe, tier E: the encoder trained as the paper trains it.

    python eval/sbmoe_recipe_encoder.py --stage search [--encoders minilm-l3] [--sets medquad,squad@16000,scifact]
    python eval/sbmoe_recipe_encoder.py --stage main [--workers 8] [--budget-minutes 9]
    python eval/sbmoe_recipe_encoder.py --stage search --lrs 0.0001   # a part of a stage: one lr;
    python eval/sbmoe_recipe_encoder.py --stage main --seeds 0        # seed 0 needs no search result

Every cell trains with ``sbmoe.training.train`` under the paper's recipe (``--recipe paper``: AdamW with
weight decay 0.01, constant lr, no warm-up or clipping, batch 64, 30 epochs, in-batch negatives only,
temperature 1 over unnormalised dot products, length 512, the last epoch kept), with the encoder's passes
in bfloat16 (``--precision bf16``, float32 weights, head and loss; ``--precision fp32`` to change it); the
arms differ only in what the recipe leaves open:

  base     no training: the untouched encoder, evaluated like the others at the same length and scored by
           the similarity it declares (cosine for minilm-l3) (stage ``search``; ``--lrs ''``: it alone)
  ft@LR    no head: plain fine-tuning, every weight at LR (stage ``search``: LR in 1e-6, 1e-5, 3e-5, 1e-4,
           seed 0; the LR with the best last-epoch dev nDCG@10 is the set's best lr, run with seeds 1
           and 2 in stage ``main``; ft@1e-06 is fine-tuning at the paper's encoder lr)
  paper    the recipe as it is: the paper's gate, head at 1e-4, encoder at 1e-6 (lr/100)
  best     the same with the best trainable gate of tier H (gumbel; no balance loss, as the recipe)
  single   the same with E = 1 (is a gain routing or parameters?)

Training and dev queries are tier H's exactly (``split_queries`` in eval/sbmoe_recipe.py: the same dev
hold-out, the same nested SQuAD subsets), written as BEIR folders with qrels/train.tsv and qrels/dev.tsv
under eval/cache/sbmoe_recipe_encoder/ and trained with ``dev_split="dev"``: the dev nDCG@10 curve is
logged every epoch and never picks the checkpoint. Evaluation is tier H's too: pooled embeddings of the
trained encoder (one pass at length 512), the trained head applied in each inference mode, FAISS Flat,
in-domain test split and the zero-shot sets, routing statistics per head.

A finished cell is written to eval/results/sbmoe_recipe/cells/<encoder>__<set>__E-<arm>__s<seed>.json
(``"tier": "E"``) and skipped on the next run; a killed cell resumes from its last epoch checkpoint (the
trainer's resume is exact) and records ``resumed_from_step``: its minutes then count only the part after it.
``--workers N`` runs N cells side by side (on one GPU a minilm training leaves the chip mostly idle);
``--out`` writes the cells elsewhere (a device machine's: eval/recipe_encoder_device.sh runs cells there).
What a cell costs on the project's CPUs and on a lent GPU, measured per session, is in
eval/results/sbmoe_recipe/plan.md; the sets that need a GPU run through eval/recipe_encoder_device.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from recipe_cells import FT_LRS, cell_path, finish_cell, ft_arm
from sbmoe_recipe import (
    BEST_GATE,
    OUT,
    Embeddings,
    declared_embeddings,
    eval_sets,
    evaluate,
    evaluate_head,
    split_name,
    split_queries,
    versions,
)

from sbmoe.training.config import PRECISIONS

HERE = Path(__file__).resolve().parent
WORK = HERE / "cache" / "sbmoe_recipe_encoder"
HEAD_ARMS: dict[str, dict] = {
    "paper": {"options": {}, "modes": ["top1", "all"]},
    "best": {"options": {"gate": BEST_GATE}, "modes": ["top1", "all"]},
    "single": {"options": {"experts": 1, "gate": "scaled"}, "modes": ["top1"]},
}
SEEDS = (0, 1, 2)


def arm_options(arm: str) -> dict:
    """The TrainConfig options an arm sets on top of the paper's recipe."""
    if arm == "base":
        return {"moe": "none"}
    if arm.startswith("ft@"):
        lr = float(arm[3:])
        return {"moe": "none", "lr": lr, "encoder_lr": lr}
    return dict(HEAD_ARMS[arm]["options"])


def split_folder(train_set: str, root: Path = WORK / "data") -> Path:
    """A BEIR folder of the training set with tier H's split: qrels/train.tsv (training queries) and
    qrels/dev.tsv (dev hold-out); corpus and queries are links to the dataset's own files."""
    from sbmoe.data import BeirDataset

    folder = root / train_set.replace("@", "-")
    if (folder / "qrels" / "dev.tsv").exists():
        return folder
    source = BeirDataset.open(split_name(train_set)[0])
    train_qids, dev_qids, qrels = split_queries(train_set)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (tmp / name).symlink_to((source.root / name).resolve())
    for split, qids in (("train", train_qids), ("dev", dev_qids)):
        rows = [f"{q}\t{d}\t{r}" for q in qids for d, r in sorted(qrels[q].items()) if r > 0]
        (tmp / "qrels" / f"{split}.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]) + "\n",
                                                     encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def best_lr(out: Path, encoder: str, train_set: str) -> float:
    """The fine-tuning lr of the search stage with the best last-epoch dev nDCG@10."""
    scores = {}
    for lr in FT_LRS:
        path = cell_path(out, encoder, train_set, f"E-{ft_arm(lr)}", 0)
        if not path.exists():
            raise SystemExit(f"{path}: missing; run --stage search for {encoder} on {train_set} first")
        scores[lr] = json.loads(path.read_text(encoding="utf-8"))["dev_curve"][-1]["dev_ndcg10"]
    return max(scores, key=scores.get)


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(encoder, set, arm, seed) of the stage; seed-major within a set, as tier H."""
    cells = []
    for encoder in args.encoders:
        for train_set in args.sets:
            if args.stage == "search":
                cells += [(encoder, train_set, "base", 0)] + [(encoder, train_set, ft_arm(lr), 0) for lr in args.lrs]
                continue
            # seed 0's fine-tuning cell is the search's, so a main stage of seed 0 alone needs no search result
            finetune = ft_arm(best_lr(args.out, encoder, train_set)) if any(args.seeds) else None
            for seed in args.seeds:
                cells += [(encoder, train_set, arm, seed) for arm in args.arms]
                if seed != 0:
                    cells.append((encoder, train_set, finetune, seed))
    return cells


def run_cell(encoder: str, train_set: str, arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one arm under the recipe (or, for ``base``, nothing) and evaluate it like tier H."""
    from sentence_transformers import SentenceTransformer

    from sbmoe.models.declared import declared_similarity
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.pipeline import sbmoe_heads
    from sbmoe.training.config import TrainConfig
    from sbmoe.training.train_log import dev_curve, resumed_from_step
    from sbmoe.training.trainer import config_record, train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    output = WORK / "models" / f"{encoder}__{train_set.replace('@', '-')}__{arm}__s{seed}"
    options = {"epochs": args.epochs, "max_steps": args.max_steps, "max_length": args.max_length,
               "precision": args.precision}
    config = TrainConfig.from_recipe(
        "paper", model=encoder, data=str(split_folder(train_set)), split="train", dev_split="dev", output=output,
        seed=seed, show_progress=False, overwrite=True, **arm_options(arm),
        **{k: v for k, v in options.items() if v is not None})
    record: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    if arm == "base":  # the untouched encoder at tier E's length: what the trained arms start from
        model = load_encoder(EncoderConfig(model=encoder, max_length=config.max_length, device=device, backend="torch"))
        record["options"] = {"max_length": config.max_length}
    else:
        started = time.perf_counter()
        train(config)  # a cell cut off (the session ended) goes on from its last epoch's checkpoint
        data_info = json.loads((output / "sbmoe_train.json").read_text(encoding="utf-8"))["data"]
        if (resumed := resumed_from_step(output / "train_log.jsonl")) is not None:
            record["resumed_from_step"] = resumed
        record.update({"recipe": "paper", "options": config_record(config),
                       "train_minutes": round((time.perf_counter() - started) / 60, 2),
                       "train_queries": data_info["train_queries"],
                       "dev_curve": dev_curve(output / "train_log.jsonl")})
        model = SentenceTransformer(str(output), device=device, trust_remote_code=True)
        model.max_seq_length = config.max_length
    embeddings = Embeddings(encoder, batch_size=args.encode_batch, model=model, cache=False)
    heads = sbmoe_heads(model)
    if heads:
        record.update(evaluate_head(heads[0].cpu(), embeddings, train_set, HEAD_ARMS[arm]["modes"]))
    else:
        record["similarity"] = declared_similarity(model)  # base: the encoder's own; ft: dot, as trained
        record["modes"] = {"-": evaluate(embeddings, eval_sets(train_set), *[declared_embeddings(model)] * 2)}
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
    return record


def run_worker(args: argparse.Namespace) -> None:
    started, last = time.perf_counter(), 0.0
    todo = [c for c in plan(args) if not cell_path(args.out, c[0], c[1], f"E-{c[2]}", c[3]).exists()]
    index, count = args.worker
    for encoder, train_set, arm, seed in todo[index::count]:
        path = cell_path(args.out, encoder, train_set, f"E-{arm}", seed)
        elapsed = (time.perf_counter() - started) / 60
        if args.budget_minutes and elapsed + last > args.budget_minutes:
            print(f"budget reached after {elapsed:.1f} min; next cell {path.stem}", flush=True)
            return
        cell_start = time.perf_counter()
        record = {"tier": "E", "encoder": encoder, "train_set": train_set, "arm": f"E-{arm}", "seed": seed,
                  "threads": torch.get_num_threads(), "workers": count, "versions": versions(),
                  "load_average": [round(x, 2) for x in os.getloadavg()]}
        record.update(run_cell(encoder, train_set, arm, seed, args))
        last = (time.perf_counter() - cell_start) / 60
        finish_cell(path, record, args.out, last, "Recipe cell (tier E)" if args.commit else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["search", "main"], required=True)
    parser.add_argument("--encoders", default="minilm-l3", type=lambda s: s.split(","))
    parser.add_argument("--sets", default="medquad,squad@16000,scifact", type=lambda s: s.split(","))
    parser.add_argument("--arms", default=",".join(HEAD_ARMS), type=lambda s: s.split(","))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--lrs", default=",".join(map(str, FT_LRS)),
                        type=lambda s: [float(x) for x in s.split(",") if x],
                        help="stage search: the fine-tuning lrs to run (default: all four; '': the base cell only)")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (cells/ inside)")
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's 30")
    parser.add_argument("--max-length", type=int, default=None, help="default: the recipe's 512")
    parser.add_argument("--max-steps", type=int, default=None, help="cut training short (a smoke run)")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS,
                        help="the encoder's arithmetic in training steps (every tier-E cell: bf16)")
    parser.add_argument("--encode-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="cells run side by side")
    parser.add_argument("--worker", default="0/1", type=lambda s: tuple(int(x) for x in s.split("/")),
                        help=argparse.SUPPRESS)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--commit", action="store_true", help="git-commit each cell as soon as it is written")
    args = parser.parse_args()
    unknown = [a for a in args.arms if a not in HEAD_ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(HEAD_ARMS)}")
    if args.workers > 1 and "--worker" not in sys.argv:
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", f"{k}/{args.workers}"])
                 for k in range(args.workers)]
        sys.exit(max(p.wait() for p in procs))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.workers))
    run_worker(args)


if __name__ == "__main__":
    main()
