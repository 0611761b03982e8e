"""Dynamic batching: concurrent search requests share one encoder forward pass and one FAISS search per k.

Requests wait in a bounded queue (a full queue answers 503 at once instead of letting latency grow without
bound). One task forms batches: it takes every request already queued, up to ``max_batch`` queries, and
waits at most ``max_wait_ms`` for more only while other requests are inside the server and not yet queued,
so a lone request never waits. Each batch runs on one worker thread, the only thread that encodes or
searches, so requests never fight over the cores. Encoding goes through ``Retriever.encode_queries`` and
searching through ``DenseIndex.run``, exactly as ``Retriever.search`` does, so a hit from the server is the
hit the Python API gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..runs import Run, SelfHits
from .config import BatchConfig
from .errors import Overloaded
from .metrics import ServeMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class DenseJob:
    """One request's queries against one loaded index (the generation it saw when it arrived)."""

    served: Any  # controller.ServedIndex; typed loosely to keep this module free of the controller
    qids: list[str]
    texts: list[str]
    k: int
    drop_self_hits: SelfHits
    future: asyncio.Future = field(repr=False)


def run_batch(jobs: list[DenseJob]) -> dict[DenseJob, Run | BaseException]:
    """Encode every job's queries of one index in one pass and search them (one FAISS call per k).

    Runs on the worker thread. A job that drops self-hits keeps its own query ids (the rule compares them
    with doc ids) and is searched on its own; the others share a call under row numbers as ids.
    """
    results: dict[DenseJob, Run | BaseException] = {}
    by_index: dict[int, list[DenseJob]] = {}
    for job in jobs:
        by_index.setdefault(id(job.served), []).append(job)
    for group in by_index.values():
        retriever = group[0].served.retriever
        try:
            embeddings = retriever.encode_queries([text for job in group for text in job.texts])
            offset, by_k = 0, {}
            for job in group:
                rows = np.arange(offset, offset + len(job.texts))
                offset += len(job.texts)
                if job.drop_self_hits:
                    results[job] = retriever.index.run(job.qids, embeddings[rows], job.k, job.drop_self_hits)
                else:
                    by_k.setdefault(job.k, []).append((job, rows))
            for k, members in by_k.items():
                rows = np.concatenate([r for _, r in members])
                run = retriever.index.run([str(r) for r in rows], embeddings[rows], k)
                for job, job_rows in members:
                    results[job] = {qid: run[str(r)] for qid, r in zip(job.qids, job_rows, strict=True)}
        except Exception as exc:  # one index's failure fails its requests, not the batch's others
            logger.exception("encoding or searching a batch of %d requests failed", len(group))
            for job in group:
                results[job] = exc
    return results


class DynamicBatcher:
    """The encoder's queue, its batching task and its single worker thread."""

    def __init__(self, config: BatchConfig, max_queue: int, metrics: ServeMetrics,
                 others_arriving: Callable[[], int] = lambda: 0) -> None:
        self.config = config
        self.max_queue = max_queue
        self.metrics = metrics
        self.others_arriving = others_arriving  # requests inside the server that may join a forming batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbmoe-encoder")
        self._queue: asyncio.Queue[DenseJob] | None = None
        self._task: asyncio.Task | None = None
        self._running: list[DenseJob] = []  # the batch being formed or run
        metrics.queue_depth = self.depth

    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._form_batches(), name="sbmoe-batcher")

    async def stop(self) -> None:
        """Stop taking batches, fail what still waits, and let the worker finish its current batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        waiting = list(self._running)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._running = []
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)

    async def search(self, served: Any, qids: list[str], texts: list[str], k: int,
                     drop_self_hits: SelfHits = False) -> Run:
        """Queue one request's queries and wait for their hits ({qid: {doc id: score}})."""
        if self._task is None or self._queue is None:
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            self.metrics.rejected.inc(reason="queue_full")
            raise Overloaded(f"server busy: {self.max_queue} requests are already waiting for the encoder; "
                             "retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(DenseJob(served, qids, texts, k, drop_self_hits, future))
        return await future

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` on the worker thread, between batches (a reload's probe query)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def _form_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            self._running = batch = [await self._queue.get()]
            queries = len(batch[0].texts)
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while queries < self.config.max_batch:
                if not self._queue.empty():
                    job = self._queue.get_nowait()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.others_arriving() - len(batch) <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(job)
                queries += len(job.texts)
            self._running = batch = [job for job in batch if not job.future.done()]  # not timed out meanwhile
            if not batch:
                continue
            self.metrics.batches.observe(sum(len(job.texts) for job in batch))
            started = time.perf_counter()
            results = await loop.run_in_executor(self.executor, run_batch, batch)
            logger.debug("batch of %d requests in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)
            for job, result in results.items():
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            self._running = []
