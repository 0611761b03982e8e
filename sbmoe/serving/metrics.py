"""Counters, gauges and histograms of the server, written in the Prometheus text exposition format (0.0.4).

A few dozen lines instead of a dependency: the server needs only labelled counters, histograms with fixed
buckets, and gauges read when scraped. Every update runs on the event loop, so no locks are needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value)) if isinstance(value, float) else str(value)


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A value read when scraped (queue depth, requests in flight), per label set."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.read().items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # per-bucket counts (+Inf last), [sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect_left(self.buckets, value)] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        series = self.series.get(tuple(sorted(labels.items())))
        return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip([*self.buckets, float("inf")], counts, strict=True):
                cumulative += count
                lines.append(f"{self.name}_bucket{_labels(key, ('le', _number(bound)))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(key)} {cumulative}")
        return lines


class ServeMetrics:
    """Everything /metrics shows: HTTP requests, latency, encoder batches, queue depth, reloads."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.generations: Callable[[], dict[str, int]] = dict
        self.requests = Counter("sbmoe_http_requests_total", "HTTP requests answered, by route and status.")
        self.latency = Histogram("sbmoe_http_request_duration_seconds", "Time from request to response.",
                                 LATENCY_BUCKETS)
        self.queries = Counter("sbmoe_search_queries_total", "Queries searched, by index and mode.")
        self.batches = Histogram("sbmoe_encoder_batch_queries", "Queries per encoder forward pass.", BATCH_BUCKETS)
        self.rejected = Counter("sbmoe_rejected_requests_total", "Requests refused for load or time (503).")
        self.reloads = Counter("sbmoe_index_reloads_total", "Index reloads, by outcome.")
        self._gauges = [
            Gauge("sbmoe_http_requests_in_flight", "Requests inside the server now.",
                  lambda: {(): self.in_flight}),
            Gauge("sbmoe_encoder_queue_depth", "Requests waiting for the encoder.", lambda: {(): self.queue_depth()}),
            Gauge("sbmoe_index_generation", "How many times each index was loaded (1 at start).",
                  lambda: {(("index", name),): gen for name, gen in self.generations().items()}),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.queries, self.batches, self.rejected, self.reloads,
                       *self._gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
