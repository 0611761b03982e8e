"""The ``auto`` backend: which runtime encodes, decided from what is installed and where the model runs.

On the CPU, with onnxruntime (and onnx, for the export) installed, ``auto`` is ONNX Runtime fp32: the same
embeddings as torch (max abs difference <= 1e-5, SciFact nDCG@10 equal to four decimals) in about half the
time on a 2-core AVX-512 CPU (issue 56); elsewhere (a GPU, no onnxruntime) it is torch. ``$SBMOE_BACKEND``
names the backend ``auto`` stands for where a machine or a test suite wants another one everywhere.

Torch-free: the warm path (embeddings cached) decides the same way without importing torch or onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .choices import AUTO, BACKENDS

BACKEND_ENV = "SBMOE_BACKEND"
FORCED = f"${BACKEND_ENV}"  # the reason of a choice the environment made: nothing for ``auto`` to announce
NO_TRANSFORMER = "the model's first module is not a Transformer, which is what ONNX Runtime would run"


@dataclass(frozen=True)
class BackendChoice:
    """A backend and why it was chosen (the tail of the line ``announce`` prints)."""

    backend: str
    reason: str


def onnx_available() -> bool:
    """Whether ONNX Runtime and onnx are installed (found, not imported: importing them costs ~0.3 s)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def onnxruntime_version() -> str | None:
    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return None


def has_transformer(folder: Path) -> bool:
    """Whether a local model starts with a Transformer (the module an ONNX graph replaces): a plain Hugging Face
    folder, or a sentence-transformers folder whose modules.json names one first (a routed model of experts
    does not). Read from the files, so the warm path decides as a load would."""
    modules = Path(folder) / "modules.json"
    if not modules.is_file():
        return True
    try:
        first = json.loads(modules.read_text(encoding="utf-8"))[0]
    except (OSError, ValueError, IndexError, KeyError):
        return True  # loading the model will say what is wrong with the file
    return str(first.get("type", "")).endswith(".Transformer")


def resolve_backend(backend: str, device: str | None, folder: Path | None = None) -> BackendChoice:
    """``backend`` itself, or for ``auto`` the backend it stands for on ``device`` (None: the CPU) for the local
    model ``folder`` (None: not known before loading).

    Raises ValueError for an unknown name, including one in ``$SBMOE_BACKEND``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != AUTO:
        return BackendChoice(backend, "chosen")
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced and forced != AUTO:
        if forced not in BACKENDS:
            raise ValueError(f"unknown backend {forced!r} in ${BACKEND_ENV}; choose one of {', '.join(BACKENDS)}")
        return BackendChoice(forced, FORCED)
    kind = (device or "cpu").split(":")[0]
    if kind != "cpu":
        return BackendChoice("torch", f"the model runs on {device}")
    if not onnx_available():
        return BackendChoice("torch", "onnxruntime is not installed (pip install 'sbmoe[onnx]')")
    if folder is not None and not has_transformer(folder):
        return BackendChoice("torch", NO_TRANSFORMER)
    return BackendChoice("onnx", "ONNX Runtime fp32 on the CPU")


def choose(backend: str, model: str, device: str | None) -> BackendChoice:
    """``resolve_backend`` for a model named as the user named it (alias, folder or hub id)."""
    from .aliases import resolve_model_name

    target = Path(resolve_model_name(model))
    return resolve_backend(backend, device, target if target.is_dir() else None)


def announce(model: str, choice: BackendChoice) -> None:
    """One line on stderr: the backend ``auto`` chose for ``model`` and why (the same on a warm run, which
    reads it from the encoder memo instead of loading the model); nothing where ``$SBMOE_BACKEND`` chose."""
    if choice.reason == FORCED:
        return
    others = "|".join(b for b in BACKENDS if b != AUTO)
    print(f"backend for {model}: {choice.backend} (auto: {choice.reason}; --backend {others} to choose)",
          file=sys.stderr, flush=True)
