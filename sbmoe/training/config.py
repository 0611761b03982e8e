"""``TrainConfig``: every option of ``sbmoe train``, with its default defined here once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.choices import GATES, MOE_CHOICES

DEFAULT_BALANCE_WEIGHT = 0.05  # Switch load-balancing weight for trainable gates


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
    batch_size: int = 64
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 256
    temperature: float | None = None
    seed: int = 42
    freeze_encoder: bool = False
    dev_fraction: float = 0.1
    dev_distractors: int = 1000
    dev_max_rows: int = 1000  # cap on the rows a triples file holds out for dev evaluation
    eval_steps: int | None = None
    save_steps: int | None = None  # checkpoint interval; default: every --eval-steps
    patience: int | None = None
    show_progress: bool = True
    overwrite: bool = False

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

    def resolved_temperature(self, normalized: bool) -> float:
        """The paper's temperature 1 suits raw dot products; with L2-normalized embeddings (cosine in
        [-1, 1]) a temperature of 1 gives almost no gradient, so those default to 0.05 (scale 20)."""
        if self.temperature is not None:
            return self.temperature
        return 0.05 if normalized else 1.0

    @property
    def checkpoint_dir(self) -> Path:
        return Path(f"{self.output}-checkpoints")
