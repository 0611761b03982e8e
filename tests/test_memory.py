"""The heap setting that keeps long encoding runs from growing: freed large blocks return to the OS."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import sys
import numpy as np
if sys.argv[1] == "fixed":
    from sbmoe.memory import return_freed_tensors
    assert return_freed_tensors()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
np.random.default_rng(0).integers(1, 2, 1)  # numpy loads its random module on first use: not heap growth
start, keep = rss_mb(), []
for round_ in range(40):  # blocks of changing sizes, as activations of length-sorted batches are
    sizes = np.random.default_rng(round_).integers(1 << 20, 16 << 20, 12)
    blocks = [np.ones(int(size), dtype=np.uint8) for size in sizes]
    keep.append(np.ones(1 << 12, dtype=np.uint8))  # a small block that stays alive after them
    del blocks
print(rss_mb() - start)
"""


def retained_mb(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_mmap_threshold_returns_freed_blocks_where_the_default_keeps_them() -> None:
    default, fixed = retained_mb("default"), retained_mb("fixed")
    assert fixed <= 2, fixed
    assert default >= 10, default  # the control: without the setting the heap keeps freed blocks


SMALL_BLOCKS = """
import ctypes
import sys
from sbmoe.memory import trim_heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
start = rss_mb()
blocks = [libc.malloc(1000) for _ in range(200_000)]  # ~200 MB of small blocks, as a tokenizer leaves
for address in blocks:
    ctypes.memset(address, 1, 1000)
pin = libc.malloc(1000)  # a live block above them: free() alone cannot shrink the heap past it
for address in blocks:
    libc.free(address)
if sys.argv[1] == "trim":
    assert trim_heap()
print(rss_mb() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_releases_freed_small_blocks() -> None:
    def retained(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", SMALL_BLOCKS, mode], check=True, capture_output=True, text=True)
        return int(done.stdout.split()[-1])

    kept, trimmed = retained("keep"), retained("trim")
    assert kept >= 150, kept  # the control: freed small blocks stay with the process
    assert trimmed <= kept - 150, (kept, trimmed)
