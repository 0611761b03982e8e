"""Stored files, both ways: written then renamed, so that an interrupted or failed write never leaves a
half-written file or folder behind; and the two faults of such files as one-line errors, a write that fails
(a full disk) and a stored file that cannot be parsed when it is read back."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# How writers outside Python (safetensors in Rust, torch's zip writer in C++) report an OS write error.
_NATIVE_WRITE_FAULT = re.compile(r"No space left on device|File too large|Disk quota exceeded|Read-only file system"
                                 r"|os error (?:27|28|30|122)\b|file write failed", re.IGNORECASE)


class CorruptArtifactError(Exception):
    """A stored file (graph, weights, tokenizer, index, shard, cache entry, checkpoint) that cannot be parsed."""


class WriteFailedError(Exception):
    """A write that failed (a full disk, a quota, a read-only folder); nothing half-written was kept."""


def reason_of(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (native libraries add pages of advice), or its type."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def corrupt_artifact(path: Path, expected: str, exc: BaseException | None = None,
                     rebuild: str | None = None) -> CorruptArtifactError:
    """``<path>: not <expected> (<why>); <how to rebuild>``: one line for a stored file that cannot be read."""
    why = f" ({reason_of(exc)})" if exc is not None else ""
    how = f"; {rebuild}" if rebuild else ""
    return CorruptArtifactError(f"{path}: not {expected}{why}{how}")


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def write_failed(path: Path, exc: BaseException, needed: int | None = None) -> WriteFailedError:
    """One line for a failed write: the path, why, the bytes needed where known and the bytes free."""
    cause = _os_error_in_chain(exc)
    why = (cause.strerror if cause is not None else None) or reason_of(exc)
    free = free_bytes(path)
    sizes = [f"{needed:,} bytes needed"] if needed else []
    sizes += [f"{free:,} bytes free"] if free is not None else []
    room = f" ({', '.join(sizes)})" if sizes else ""
    return WriteFailedError(f"{path}: write failed: {why}{room}; nothing half-written was kept, free space and "
                            "rerun the same command")


def is_write_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised while writing, is the file system refusing the bytes.

    FileNotFoundError and FileExistsError keep their own meaning (a missing input, an existing output);
    a native writer's error counts when its message carries an OS write error.
    """
    cause = _os_error_in_chain(exc)
    if cause is not None:
        return not isinstance(cause, (FileNotFoundError, FileExistsError))
    return bool(_NATIVE_WRITE_FAULT.search(str(exc)))


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    """``exc`` or the OSError it was raised over (torch's zip writer masks a full disk with its own error)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_disk_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the file system refusing bytes (full, over quota, too large, read-only), wherever it
    was raised; stricter than ``is_write_fault``, for code that also reads."""
    cause = _os_error_in_chain(exc)
    if cause is not None:
        return cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    return bool(_NATIVE_WRITE_FAULT.search(str(exc)))


@contextmanager
def guarded_write(path: Path, needed: int | None = None) -> Iterator[None]:
    """Turn a write fault inside the block into ``WriteFailedError`` naming ``path``."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, WriteFailedError) or not is_write_fault(exc):
            raise
        raise write_failed(path, exc, needed) from None


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.

    An existing ``final`` is only replaced with ``overwrite``; it is moved aside first and removed after
    the new folder is in place, so at every moment one complete version exists on disk. A write fault in
    the block removes the temporary folder and raises ``WriteFailedError`` (``needed``: bytes, if known).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
    with guarded_write(final, needed):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        with guarded_write(final, needed):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(final: Path, mode: str = "w", needed: int | None = None) -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it into place on success.

    A write fault (closing included: buffered bytes go out then) removes the temporary file and raises
    ``WriteFailedError`` (``needed``: bytes, if known).
    """
    final = Path(final)
    with guarded_write(final, needed):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.tmp-")
    try:
        with guarded_write(final, needed):
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary sibling path renamed to ``final`` on success, for writers that take a path, not a handle
    (the ONNX exporter and quantiser)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with guarded_write(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Pretty JSON, written atomically."""
    with atomic_file(Path(path)) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_checkpoint(path: Path, expected: str, rebuild: str | None = None) -> Any:
    """``torch.load`` of tensors and plain data only (``weights_only``): a checkpoint from elsewhere cannot run
    code on load. A file whose pickle names anything else is refused, an unreadable one is one line."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"names {named.group(1)}" if named else "holds objects"
        raise CorruptArtifactError(f"{path}: refused: its pickle {what}, not only tensors and plain data, and "
                                   "loading it could run code (sbmoe loads checkpoints with weights_only)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise corrupt_artifact(path, expected, exc, rebuild) from None
