"""The LM testbed's settings (``sbmoe lm train``), defined once and importable without torch, so the command
line can show them as defaults before anything heavy loads. ``POOL_MODES`` and ``PSR_SCHEDULES`` (from
``sbmoe.moe.pools``) are the names ReXMoE understands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..moe.pools import POOL_MODES, PSR_SCHEDULES

PSR_FRACTION = 0.5  # default share of training over which PSR unmasks, when a PSR schedule is chosen


@dataclass
class LMConfig:
    vocab_size: int = 4096
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    experts_per_layer: int = 8
    expert_hidden: int = 128
    top_k: int = 2
    expert_kind: str = "swiglu"
    pool: str = "local"  # local | group | sliding
    reuse: int = 1  # r: layers whose experts a router may choose
    psr_fraction: float = 0.0  # unmask non-local candidates over this share of training
    psr_schedule: str = "none"  # none | linear | step
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    pregate: bool = False  # block l's router reads block l-1's MoE input (Pre-gated MoE)

    def __post_init__(self) -> None:
        if self.pool not in POOL_MODES:
            raise ValueError(f"unknown expert pool {self.pool!r}; choose one of {', '.join(POOL_MODES)}")
        if self.psr_schedule not in PSR_SCHEDULES:
            raise ValueError(f"unknown PSR schedule {self.psr_schedule!r}; choose one of {', '.join(PSR_SCHEDULES)}")
        if self.reuse < 1 or (self.pool == "local") != (self.reuse == 1):
            raise ValueError(f"pool {self.pool!r} with reuse {self.reuse}: local pools take reuse 1, "
                             "ReXMoE pools reuse >= 2")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


@dataclass
class LMTrainConfig:
    model: LMConfig = field(default_factory=LMConfig)
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    eval_every: int = 100
    eval_batches: int = 16
    seed: int = 0
    output: Path | None = None  # checkpoints (and resume) when set
    show_progress: bool = True
    stop_on_convergence: bool = False  # end before ``steps`` once ``converged`` holds
    convergence_window: float = 0.2  # ... over this last share of steps
    convergence_tolerance: float = 0.01  # ... validation PPL improved by less than this (relative)
    min_steps: int = 0  # the rule is not applied before this step
    time_limit_s: float | None = None  # stop after the first checkpoint past this many seconds (resumable)
    init_from: Path | None = None  # start from this run folder's weights (e.g. a baseline -> pre-gated)
    device: str = "cpu"  # where the model trains ("cuda" on a GPU); checkpoints are written device-free
    corpus: str = "scifact"  # the text it trains on (``sbmoe.lm.data.CORPORA``), kept in the checkpoint
    final_eval_tokens: int = 0  # the final perplexities read this many tokens of each split (0: all), kept too
