"""Where datasets and caches live: the data roots searched for ``<name>/`` and sbmoe's cache folder.

Order: ``$SBMOE_DATA/<name>``, ``./data/<name>``, ``../shared/data/<name>`` (relative to the working
directory and to the source checkout), then the download cache ``$SBMOE_CACHE/datasets/<name>``
(default ``~/.cache/sbmoe``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of sbmoe's on-disk cache (datasets, corpus embeddings)."""
    env = os.environ.get("SBMOE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sbmoe"


def search_roots() -> list[Path]:
    """Folders searched for ``<name>/``, in priority order."""
    roots: list[Path] = []
    env = os.environ.get("SBMOE_DATA")
    if env:
        roots.append(Path(env))
    roots.append(Path.cwd() / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    checkout = Path(__file__).resolve().parents[2]  # the source tree when installed editable
    roots.append(checkout.parent / "shared" / "data")
    roots.append(cache_root() / "datasets")
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique
