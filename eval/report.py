"""Helpers the eval scripts share: mean ± std cells, latency percentiles, atomic PNG writing, a time budget, the
machine line."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sbmoe.atomic import atomic_file


def mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` over seeds (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of latencies (NaN for none)."""
    return float(np.percentile(values, q)) if values else float("nan")


def command_line(script: str, args: argparse.Namespace) -> str:
    """The command that reproduces a run, for a result file's header: every set option written as a flag
    (``--name value``; a bare ``--name`` for a switch that is on; unset and off options left out)."""
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
             for k, v in vars(args).items() if v is not None and v is not False]
    return " ".join([f"python {script}", *flags])


def machine_line() -> str:
    """The machine a result was measured on, as the result JSONs record it."""
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


class TimeBudget:
    """Starts no run that the previous run's duration says would end past ``minutes`` (None: no limit),
    so a budgeted script ends on time with a set of complete runs and a list of what it skipped."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.started = time.perf_counter()
        self.last_run = 0.0
        self.run_started = self.started
        self.skipped: list[str] = []

    def start(self, name: str) -> bool:
        """True if the run ``name`` may start (and starts its clock); False records it as skipped."""
        now = time.perf_counter()
        if self.minutes and (now - self.started + self.last_run) / 60 > self.minutes:
            self.skipped.append(name)
            return False
        self.run_started = now
        return True

    def finish(self) -> float:
        """End the current run; returns its seconds."""
        self.last_run = time.perf_counter() - self.run_started
        return self.last_run

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
