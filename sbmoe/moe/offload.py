"""An expert offload runtime: experts live in host memory, a cache keeps C of them resident on the compute
device, and a copy worker fetches experts while other work runs.

Modes (the prefetch policy; every mode computes the same numbers, only when weights arrive differs):
``all-resident`` every expert copied once up front (the memory-hungry upper bound); ``on-demand`` a
block's missing experts are copied once it is routed (the compute waits); ``prefetch-all`` while block l
computes, all of block l+1's candidate experts are copied; ``pre-gated`` while block l computes, the experts
block l+1's pre-gate chose are copied (Pre-gated MoE). Misses in any mode are fetched on demand:
``fetch_missing`` starts a routed block's misses before the next block's prefetch is issued.

The copy worker is one thread (one copy engine: copies queue in the order issued, as on one PCIe link, so a
miss found after a prefetch was issued waits behind it). On CUDA the host copies are pinned and the thread
issues ``non_blocking`` copies on its own stream, and the compute stream waits on the copy's event.
``bandwidth`` (bytes/s) simulates a slower link: the copy still happens, but an expert counts as arrived only
at the time a serial link of that speed would deliver it, and compute that needs it waits until then (spinning
for short waits, so thread wake-ups do not blur sub-millisecond copy times). So a CPU machine shows the
regime where copy time is comparable to compute time. The runtime records per-block latency, peak resident
experts and bytes, bytes copied, hits, misses, stall time and a timeline of copy, compute and stall intervals.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .dispatch import activation, align_by_expert

OFFLOAD_MODES = ("all-resident", "on-demand", "prefetch-all", "pre-gated")


@dataclass
class OffloadConfig:
    mode: str = "pre-gated"
    capacity: int | None = None  # resident experts C; None (and always in all-resident): every expert
    bandwidth: float | None = None  # simulated host -> device bytes/s; None: the real copy speed
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in OFFLOAD_MODES:
            raise ValueError(f"unknown offload mode {self.mode!r}; choose one of {', '.join(OFFLOAD_MODES)}")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"cache capacity must be >= 1 expert, got {self.capacity}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth}")


@dataclass
class Interval:
    """One timeline entry: ``lane`` is copy, compute or stall; times in seconds from the runtime's start."""

    lane: str
    layer: int
    expert: int
    start: float
    end: float


@dataclass
class _Slot:
    future: Future
    ready_at: float = 0.0  # perf_counter time the simulated link delivers it (0: when the copy is done)
    demand: bool = False  # started by fetch_missing: its first use is a miss, not a hit
    done_event: object | None = None  # CUDA event the compute stream waits on


@dataclass
class OffloadStats:
    """Counters since the last reset; hits and misses count expert uses (one per block per needed expert)."""

    block_seconds: dict[int, list[float]] = field(default_factory=dict)  # layer -> one entry per block run
    bytes_copied: int = 0  # host -> device, prefetches and demand fetches alike
    copies: int = 0
    hits: int = 0  # needed experts found resident (or in flight: the wait is stall time)
    misses: int = 0  # needed experts fetched on demand
    stall_seconds: float = 0.0  # compute waiting for copies
    peak_resident: int = 0  # most experts held (resident or being copied in) at once


class ExpertOffloadRuntime:
    """Runs expert FFNs of a bank (weights ``w_in`` (E, d, h_in), ``w_out`` (E, h, d)) from a cache of
    ``capacity`` resident experts filled from host memory."""

    def __init__(self, w_in: Tensor, w_out: Tensor, kind: str, config: OffloadConfig) -> None:
        self.config, self.kind = config, kind
        self.device = torch.device(config.device)
        self.cuda = self.device.type == "cuda"
        self.num_experts = w_in.shape[0]
        every = config.capacity is None or config.mode == "all-resident"
        self.capacity = self.num_experts if every else min(config.capacity, self.num_experts)
        pin = self.cuda and torch.cuda.is_available()
        self.host = [(w_in[e].detach().to("cpu", copy=True), w_out[e].detach().to("cpu", copy=True))
                     for e in range(self.num_experts)]
        if pin:
            self.host = [(a.pin_memory(), b.pin_memory()) for a, b in self.host]
        self.expert_bytes = sum(t.numel() * t.element_size() for t in self.host[0])
        self.slots: OrderedDict[int, _Slot] = OrderedDict()  # least recently used first
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expert-copy")
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.lock = threading.Lock()
        self.stats = OffloadStats()
        self.timeline: list[Interval] = []
        self.origin = time.perf_counter()
        self.layer = -1
        self.reserved: set[int] = set()  # the last prefetch's experts
        self.link_free = 0.0  # when the simulated link finishes its queued copies
        if config.mode == "all-resident":
            group: list[tuple[int, Future]] = []
            for expert in range(self.num_experts):
                self._insert(expert, set(), group)
            self._submit(group)
            for slot in self.slots.values():
                self._wait(slot)
            self.reset_stats()

    # ---- cache -------------------------------------------------------------------------------------
    def _copy(self, expert: int, layer: int) -> tuple[tuple[Tensor, Tensor], object | None]:
        start = time.perf_counter()
        event = None
        if self.cuda:
            with torch.cuda.stream(self.stream):
                weights = tuple(t.to(self.device, non_blocking=True) for t in self.host[expert])
                event = torch.cuda.Event()
                event.record(self.stream)
            event.synchronize()
        else:
            weights = tuple(t.clone() for t in self.host[expert])
        if self.config.bandwidth is None:  # simulated copies are on the timeline as the link delivers them
            self.timeline.append(Interval("copy", layer, expert, start - self.origin,
                                          time.perf_counter() - self.origin))
        return weights, event

    def _copy_group(self, group: list[tuple[int, Future]], layer: int) -> None:
        for expert, future in group:
            try:
                future.set_result(self._copy(expert, layer))
            except BaseException as error:  # the waiting compute re-raises it
                future.set_exception(error)

    def _submit(self, group: list[tuple[int, Future]]) -> None:
        """Hand the worker a list of started copies as one job: each hand-off to the copy thread costs
        ~0.1 ms of the compute thread's time on a CPU (measured), so a block's copies go together."""
        if group:
            self.worker.submit(self._copy_group, list(group), self.layer)

    def _evictable(self, keep: set[int]) -> int | None:
        for expert, slot in self.slots.items():
            if expert not in keep and self._arrived(slot):
                return expert
        return None

    def _insert(self, expert: int, keep: set[int], group: list[tuple[int, Future]] | None = None) -> bool:
        """Start copying ``expert`` into a free slot, evicting the least recently used finished expert not in
        ``keep``; False (nothing started) when every slot is kept or still copying. With ``group`` the copy
        joins that list, which the caller hands to the worker (``_submit``) before anything waits on it."""
        with self.lock:
            if len(self.slots) >= self.capacity:
                victim = self._evictable(keep)
                if victim is None:
                    return False
                del self.slots[victim]
            slot = self.slots[expert] = _Slot(Future())
            if group is None:
                self._submit([(expert, slot.future)])
            else:
                group.append((expert, slot.future))
            if self.config.bandwidth is not None:
                start = max(time.perf_counter(), self.link_free)
                slot.ready_at = self.link_free = start + self.expert_bytes / self.config.bandwidth
                self.timeline.append(Interval("copy", self.layer, expert, start - self.origin,
                                              slot.ready_at - self.origin))
            if len(self.slots) > self.capacity:  # the invariant the tests instrument
                raise AssertionError(f"{len(self.slots)} resident experts exceed the capacity {self.capacity}")
            self.stats.peak_resident = max(self.stats.peak_resident, len(self.slots))
            self.stats.bytes_copied += self.expert_bytes
            self.stats.copies += 1
            return True

    @staticmethod
    def _arrived(slot: _Slot) -> bool:
        return slot.future.done() and time.perf_counter() >= slot.ready_at

    @staticmethod
    def _wait(slot: _Slot) -> None:
        """Block until the slot's copy is done and, on a simulated link, delivered."""
        slot.future.result()
        while (left := slot.ready_at - time.perf_counter()) > 0:
            if left > 2e-3:
                time.sleep(left - 1e-3)

    def prefetch(self, experts: Iterable[int], in_use: Iterable[int] = ()) -> None:
        """Start copying the given experts (the next block's) without evicting them or ``in_use`` (the
        current block's); later misses evict them only when nothing else can go."""
        wanted = list(dict.fromkeys(int(e) for e in experts))
        self.reserved = set(wanted)
        keep = self.reserved | {int(e) for e in in_use}
        group: list[tuple[int, Future]] = []
        for expert in wanted:
            if expert in self.slots:
                self.slots.move_to_end(expert)
            elif not self._insert(expert, keep, group):
                break
        self._submit(group)

    def fetch_missing(self, experts: Iterable[int]) -> None:
        """Start copying the current block's missing experts now, without waiting: called once the block is
        routed and before any prefetch for the next block, so the copies the block waits for go first on the
        link instead of queueing behind the next block's."""
        wanted = list(dict.fromkeys(int(e) for e in experts))
        keep = set(wanted) | self.reserved
        group: list[tuple[int, Future]] = []
        for expert in wanted:
            if expert not in self.slots and self._insert(expert, keep, group):
                self.slots[expert].demand = True
        self._submit(group)

    def _acquire(self, expert: int, keep: set[int]) -> tuple[Tensor, Tensor]:
        """The resident weights of ``expert``, fetching it on demand and waiting for its copy."""
        slot = self.slots.get(expert)
        if slot is None:
            self.stats.misses += 1
            while not self._insert(expert, keep):  # every slot kept: relax to the current expert only
                keep = {expert}
                self._wait(next(iter(self.slots.values())))
            slot = self.slots[expert]
        elif slot.demand:
            self.stats.misses += 1
            slot.demand = False
        else:
            self.stats.hits += 1
        self.slots.move_to_end(expert)
        if not self._arrived(slot):
            start = time.perf_counter()
            self._wait(slot)
            self.stats.stall_seconds += time.perf_counter() - start
            self.timeline.append(Interval("stall", self.layer, expert, start - self.origin,
                                          time.perf_counter() - self.origin))
        weights, event = slot.future.result()
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        return weights

    # ---- compute -----------------------------------------------------------------------------------
    @contextmanager
    def block(self, layer: int) -> Iterator[None]:
        """Time one block (its attention, routing and experts)."""
        self.layer = layer
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.stats.block_seconds.setdefault(layer, []).append(time.perf_counter() - start)

    def run_experts(self, x: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        """sum_j weights[n, j] * expert_{expert_ids[n, j]}(x[n]); the same numbers as
        ``dispatch.moe_dispatch``'s torch path whatever order the experts become resident in."""
        alignment = align_by_expert(expert_ids, self.num_experts)
        offsets = alignment.offsets.tolist()
        needed = [e for e in range(self.num_experts) if offsets[e + 1] > offsets[e]]
        ready = {e for e in needed if e in self.slots and self._arrived(self.slots[e])}
        rows = x[alignment.tokens]
        out_sorted = torch.empty_like(rows)
        pending = set(needed)
        for expert in sorted(needed, key=lambda e: e not in ready):  # resident experts first
            w_in, w_out = self._acquire(expert, pending | self.reserved)
            start, end = offsets[expert], offsets[expert + 1]
            began = time.perf_counter()
            out_sorted[start:end] = activation(rows[start:end] @ w_in, self.kind) @ w_out
            self.timeline.append(Interval("compute", self.layer, expert, began - self.origin,
                                          time.perf_counter() - self.origin))
            pending.discard(expert)
        slot_weights = weights.reshape(-1)[alignment.order].unsqueeze(-1).to(out_sorted.dtype)
        return torch.zeros_like(x).index_add_(0, alignment.tokens, out_sorted * slot_weights)

    # ---- reporting ---------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stats = OffloadStats(peak_resident=len(self.slots))
        self.timeline = []
        self.origin = time.perf_counter()

    def summary(self) -> dict:
        s = self.stats
        return {"mode": self.config.mode, "capacity": self.capacity, "bandwidth": self.config.bandwidth,
                "expert_bytes": self.expert_bytes,
                "block_ms": {layer: 1e3 * sum(v) / len(v) for layer, v in sorted(s.block_seconds.items())},
                "peak_resident_experts": s.peak_resident, "peak_resident_bytes": s.peak_resident * self.expert_bytes,
                "bytes_copied": s.bytes_copied, "copies": s.copies, "hits": s.hits, "misses": s.misses,
                "stall_ms": 1e3 * s.stall_seconds}

    def close(self) -> None:
        self.worker.shutdown(wait=True)
