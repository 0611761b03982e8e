"""What produced a results file: versions, commit, command line, data file hashes, model fingerprints.

Written into eval.json (and compare.json) so that a reader can tell two results files apart by what made
them, and redo one. Every field is best effort: a missing package or a tree outside git gives None.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..version import __version__

PACKAGES = ("torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu", "pyserini", "ir-measures",
            "scipy", "numpy", "onnxruntime")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None: not installed); faiss-gpu only when it is the one installed."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            if name != "faiss-gpu":
                versions[name] = None
    return versions


def git_state(root: Path | None = None) -> dict[str, object] | None:
    """The commit of the source tree sbmoe is imported from and whether tracked files differ from it;
    None for an installed wheel, a tree outside git, or no git."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def dataset_files(root: Path, files: list[str]) -> dict[str, str]:
    """sha256 of each named file under ``root`` that exists (e.g. corpus.jsonl, queries.jsonl, qrels/test.tsv)."""
    return {name: file_sha256(root / name) for name in files if (Path(root) / name).is_file()}


def provenance(datasets: dict[str, dict] | None = None, models: dict[str, dict] | None = None,
               **extra: object) -> dict:
    """The provenance block: sbmoe version, git state, command line, time, python, packages, then the
    per-dataset files (name -> {root, split, sha256}) and per-model entries (name -> {fingerprint, backend,
    device}) the caller gathered, and any ``extra`` fields."""
    return {"sbmoe_version": __version__, "git": git_state(), "command": list(sys.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - py3.10 too
            "python": platform.python_version(), "platform": platform.platform(), "packages": package_versions(),
            "datasets": datasets or {}, "models": models or {}, **extra}
