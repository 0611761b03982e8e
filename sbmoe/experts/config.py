"""``ExpertConfig`` and ``RoutedConfig``: every option of ``sbmoe expert train`` and ``sbmoe expert route``,
with their defaults defined here once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EXPERT_KINDS = ("lora", "pooled")  # LoRA inside the encoder's query pass | a residual map on the pooled embedding
ROUTING_MODES = ("pilot", "gate", "supervised", "dataset", "average")  # modes a saved routed model runs
ANALYSIS_MODES = ("oracle", "best-per-query")  # need the test set's domain or its qrels: evaluation only
LORA_TARGETS = ("query", "key", "value", "dense")  # BERT attention and feed-forward projections


@dataclass
class ExpertConfig:
    """One query-side expert trained on one dataset (or a union of several: the multi-task expert)."""

    model: str = "minilm"
    data: tuple[str, ...] = ("scifact",)
    output: Path = Path("experts/scifact")
    split: str = "train"
    kind: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = LORA_TARGETS
    lr: float = 5e-4
    epochs: int = 1
    max_steps: int = 0  # stop after this many steps (0: the epochs decide)
    batch_size: int = 64
    temperature: float | None = None  # None: 0.05 for cosine models, 1.0 for dot (the similarity they declare)
    negatives: str = "mined"  # mined: one hard negative per query from the base model's ranking | none
    mine_depth: int = 30  # the hard negative is the best-ranked non-relevant document among the top this many
    max_queries: int = 0  # train on a seeded sample of at most this many queries per dataset (0: all)
    dev_queries: int = 200  # held-out training queries per dataset for dev nDCG@10 (keep-best per epoch)
    max_query_length: int = 64  # tokens; queries are short, and the documents are never encoded here
    save_steps: int = 200  # a resumable checkpoint every this many steps inside an epoch (and at each epoch's end)
    max_minutes: float = 0.0  # stop at the first checkpoint after this much training (0: no limit); rerun resumes
    seed: int = 0
    name: str | None = None  # the expert's name in a routed model (default: the datasets, joined by "+")
    show_progress: bool = True
    overwrite: bool = False

    @property
    def expert_name(self) -> str:
        return self.name or "+".join(Path(d).name for d in self.data)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(f"{self.output}-checkpoints")

    def validate(self) -> None:
        if self.kind not in EXPERT_KINDS:
            raise ValueError(f"unknown expert kind {self.kind!r}; choose one of {', '.join(EXPERT_KINDS)}")
        if self.negatives not in ("mined", "none"):
            raise ValueError(f"unknown negatives {self.negatives!r}; choose mined or none")
        if not self.data:
            raise ValueError("an expert needs at least one training dataset")
        if self.batch_size < 2 or self.epochs < 1 or self.rank < 1:
            raise ValueError("batch size must be >= 2, epochs and rank >= 1")


@dataclass
class RoutedConfig:
    """A routed model: the base encoder, named experts, and the routing data built from their training queries."""

    experts: dict[str, Path] = field(default_factory=dict)  # name -> expert folder (from ``train_expert``)
    output: Path = Path("models/routed")
    mode: str = "pilot"
    pilots_per_expert: int = 8  # k of RouterRetriever's k-means over each expert's queries
    routing_queries: int = 2000  # training queries per expert's domain used to build pilots, gate, classifier
    gate_epochs: int = 20
    gate_lr: float = 1e-2
    seed: int = 0
    batch_size: int = 64
    overwrite: bool = False

    def validate(self) -> None:
        if self.mode not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {self.mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        if not self.experts:
            raise ValueError("a routed model needs at least one expert")
