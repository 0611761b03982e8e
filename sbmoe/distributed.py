"""The process's place in a ``torchrun`` job: rank, world size, and a barrier; one process when not launched.

Read from torchrun's environment (``RANK``, ``WORLD_SIZE``) so it is right before any process group exists;
sbmoe's writers (final model, index folder, logs) run on rank 0 only and the others wait at a barrier.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def local_device() -> str:
    """This process's device under torchrun: ``cuda:<LOCAL_RANK>`` with GPUs, else ``cpu``."""
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def init_process_group() -> bool:
    """Join torchrun's process group (gloo on CPU, NCCL on GPUs) if launched by it; True when distributed."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() <= 1:  # nothing to wait for, and no need to import torch.distributed
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
