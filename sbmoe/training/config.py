"""``TrainConfig``: every option of ``sbmoe train``, with its default defined here once."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..models.choices import GATES, MOE_CHOICES

DEFAULT_BALANCE_WEIGHT = 0.05  # Switch load-balancing weight for trainable gates
NEGATIVES = ("mined", "none")  # a BEIR split: one mined hard negative per pair, or in-batch negatives only
HEAD_SIDES = ("both", "query")  # the head encodes queries and documents, or queries only
KEEP = ("best", "last")  # the checkpoint kept: best dev nDCG@10, or the last step's
SCHEDULERS = ("linear", "constant")
PRECISIONS = ("fp32", "bf16")  # the encoder's arithmetic in a training step (head, loss, weights: float32)

# The SB-MoE paper's training recipe, read from its reference code: AdamW (weight decay 0.01) with the
# encoder at lr/100 and the head at lr, no scheduler, warm-up or clipping; batch 64, 30 epochs, in-batch
# negatives only, temperature 1 over dot products of unnormalised mean-pooled embeddings, max length 512,
# E = 6 experts, its own gate (noisy top-1), no balance loss, one head for queries and documents, and the
# last epoch's model kept. ``sbmoe train --recipe paper`` sets all of these; explicit options override them.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(lr=1e-4, encoder_lr=1e-6, router_lr_scale=1.0, weight_decay=0.01, scheduler="constant",
                  max_grad_norm=0.0, batch_size=64, epochs=30.0, negatives="none", temperature=1.0,
                  normalize=False, max_length=512, experts=6, moe="top1", gate="paper", aux_loss_weight=0.0,
                  separate_heads=False, head_side="both", keep="last"),
}


@dataclass
class TrainConfig:
    """Arguments of ``sbmoe train``; defaults follow the SB-MoE paper where it gives one."""

    model: str = "minilm"
    output: Path = Path("models/sbmoe")
    data: str = "scifact"
    split: str = "train"
    collection: Path | None = None  # with --data id-triples: MS MARCO collection.tsv (pid<TAB>passage)
    queries_file: Path | None = None  # with --data id-triples: queries.train.tsv (qid<TAB>query)
    shuffle_buffer: int = 100_000  # rows a triples file is shuffled over at once (memory: one window)
    moe: str = "top1"
    experts: int = 6
    latent: int | None = None
    gate: str = "scaled"
    freeze_router: bool = False
    separate_heads: bool = False
    aux_loss_weight: float | None = None
    router_lr_scale: float = 10.0
    lr: float = 1e-4
    encoder_lr: float | None = None  # the encoder's learning rate (None: --lr, like the head)
    weight_decay: float = 0.0
    scheduler: str = "linear"  # learning-rate schedule: linear decay to 0, or constant
    max_grad_norm: float = 1.0  # gradient clipping (0: none)
    negatives: str = "mined"
    head_side: str = "both"
    keep: str = "best"
    normalize: bool | None = None  # L2-normalise embeddings (None: the model's own setting)
    micro_batch_tokens: int = 8192  # encode each batch in length-sorted micro-batches of this many tokens (0: off)
    precision: str = "fp32"  # bf16: the encoder under bfloat16 autocast in the micro-batched step
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 256
    temperature: float | None = None
    seed: int = 42
    freeze_encoder: bool = False
    dev_fraction: float = 0.1
    dev_split: str | None = None  # a BEIR split whose queries are the dev set (None: hold out dev_fraction)
    dev_distractors: int = 1000
    dev_max_rows: int = 1000  # cap on the rows a triples file holds out for dev evaluation
    eval_steps: int | None = None
    save_steps: int | None = None  # checkpoint interval; default: every --eval-steps
    patience: int | None = None
    show_progress: bool = True
    overwrite: bool = False
    recipe: str | None = None  # the recipe these settings were resolved from (recorded in the log)

    @classmethod
    def from_recipe(cls, recipe: str | None, **options: Any) -> TrainConfig:
        """Defaults, then the recipe's settings, then the options a user gave explicitly."""
        if recipe is not None and recipe not in RECIPES:
            raise ValueError(f"unknown --recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return replace(cls(), **{**(RECIPES[recipe] if recipe else {}), **options, "recipe": recipe})

    def validate(self) -> None:
        """Refuse option combinations that cannot train what they name."""
        if self.moe not in MOE_CHOICES:
            raise ValueError(f"unknown --moe {self.moe!r}; choose one of {', '.join(MOE_CHOICES)}")
        if self.gate not in GATES:
            raise ValueError(f"unknown --gate {self.gate!r}; choose one of {', '.join(GATES)}")
        if self.freeze_encoder and self.moe == "none":
            raise ValueError("--freeze-encoder trains only the SB-MoE head, so it needs --moe top1|all|random")
        if self.experts < 1:
            raise ValueError(f"--experts must be at least 1, got {self.experts}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"--shuffle-buffer must be at least 1, got {self.shuffle_buffer}")
        for name, value, choices in (("--negatives", self.negatives, NEGATIVES), ("--head-side", self.head_side,
                                      HEAD_SIDES), ("--keep", self.keep, KEEP), ("--scheduler", self.scheduler,
                                      SCHEDULERS), ("--precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.head_side == "query" and (self.moe == "none" or self.separate_heads):
            raise ValueError("--head-side query puts one SB-MoE head on the query side: it needs --moe "
                             "top1|all|random and no --separate-heads")
        if self.micro_batch_tokens < 0:
            raise ValueError(f"--micro-batch-tokens must be 0 (off) or positive, got {self.micro_batch_tokens}")
        if self.precision == "bf16" and (self.micro_batch_tokens == 0 or self.freeze_encoder):
            raise ValueError("--precision bf16 runs the encoder of the micro-batched step in bfloat16: it needs "
                             "--micro-batch-tokens > 0 and a trained encoder (not --freeze-encoder)")
        if self.dev_split is not None and Path(self.data).is_file():
            raise ValueError("--dev-split names a split of a BEIR dataset; a triples file holds out --dev-fraction "
                             "of its rows")
        if (self.collection is None) != (self.queries_file is None):
            raise ValueError("MS MARCO id triples need both --collection and --queries-file")

    def router_trains(self) -> bool:
        """Whether the head's router can learn: a head, a gate with router gradients, not frozen or random."""
        return self.moe not in ("none", "random") and self.gate != "paper" and not self.freeze_router

    def resolved_aux_loss_weight(self) -> float:
        """Trainable gates get a load-balancing loss by default; the paper's gate (no router gradient),
        a frozen router and the random control have nothing for it to act on."""
        if self.aux_loss_weight is not None:
            return self.aux_loss_weight
        return DEFAULT_BALANCE_WEIGHT if self.router_trains() else 0.0

    def resolved_encoder_lr(self) -> float:
        return self.lr if self.encoder_lr is None else self.encoder_lr

    def resolved_temperature(self, normalized: bool) -> float:
        """The paper's temperature 1 suits raw dot products; with L2-normalized embeddings (cosine in
        [-1, 1]) a temperature of 1 gives almost no gradient, so those default to 0.05 (scale 20)."""
        if self.temperature is not None:
            return self.temperature
        return 0.05 if normalized else 1.0

    @property
    def checkpoint_dir(self) -> Path:
        return Path(f"{self.output}-checkpoints")
