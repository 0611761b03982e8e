"""A seeded shuffle of ``n`` rows that holds at most ``buffer`` of them and can start at any position.

The rows are cut into chunks of ``buffer // k`` consecutive rows (``k = min(CHUNKS_PER_WINDOW, buffer)``);
each epoch the chunk order is a seeded permutation, every ``k`` chunks in that order form a window, and
the rows of a window are permuted together. So a window mixes rows from many places of the file, at most
``buffer`` rows are ever needed at once, and the row at stream position ``p`` (``epoch * n + offset``)
is a pure function of ``(n, buffer, seed, p)``: resuming at a row offset needs no replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHUNKS_PER_WINDOW = 16


@dataclass(frozen=True)
class WindowShuffle:
    """Seeded windowed shuffle of ``range(n)``, repeated epoch after epoch with fresh permutations."""

    n: int
    buffer: int
    seed: int

    @property
    def chunks_per_window(self) -> int:
        return max(1, min(CHUNKS_PER_WINDOW, self.buffer))

    @property
    def chunk_rows(self) -> int:
        return max(1, self.buffer // self.chunks_per_window)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk order, end position of each window) for one epoch."""
        chunks = math.ceil(self.n / self.chunk_rows)
        order = np.random.default_rng([self.seed, epoch]).permutation(chunks)
        sizes = np.full(chunks, self.chunk_rows, dtype=np.int64)
        sizes[-1] = self.n - self.chunk_rows * (chunks - 1)
        ends = np.cumsum(np.add.reduceat(sizes[order], np.arange(0, chunks, self.chunks_per_window)))
        return order, ends

    def _window(self, order: np.ndarray, epoch: int, window: int) -> np.ndarray:
        per = self.chunks_per_window
        picked = order[window * per:(window + 1) * per]
        rows = np.concatenate([np.arange(c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n))
                               for c in picked])
        return np.random.default_rng([self.seed, epoch, window]).permutation(rows)

    def windows(self, position: int = 0) -> Iterator[np.ndarray]:
        """Row numbers from stream position ``position`` on, one window (or its tail) at a time, forever."""
        if self.n <= 0:
            raise ValueError("nothing to shuffle: no rows")
        epoch, offset = divmod(position, self.n)
        while True:
            order, ends = self._layout(epoch)
            for window in range(int(np.searchsorted(ends, offset, side="right")), len(ends)):
                begin = int(ends[window - 1]) if window else 0
                yield self._window(order, epoch, window)[offset - begin:]
                offset = int(ends[window])
            epoch, offset = epoch + 1, 0
