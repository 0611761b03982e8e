"""Damaged index folders: a truncated, empty or foreign ``index.faiss`` and an index whose vectors disagree
with its ids or meta.json fail with one line naming the file, never with faiss's C++ message."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from sbmoe.index.faiss_index import DenseIndex, IndexMeta, IndexMismatchError


def saved_index(folder: Path, dim: int = 8, count: int = 20) -> Path:
    vectors = np.random.default_rng(0).standard_normal((count, dim)).astype(np.float32)
    meta = IndexMeta(model="toy", model_fingerprint="f" * 64, pooling="mean", dim=dim, normalize=False, count=count)
    return DenseIndex.from_embeddings(vectors, [f"d{i}" for i in range(count)], meta).save(folder / "idx")


def load_error(folder: Path) -> str:
    with pytest.raises(IndexMismatchError) as caught:
        DenseIndex.load(folder)
    message = str(caught.value)
    assert "\n" not in message and "faiss::" not in message and ".cpp" not in message, message
    return message


@pytest.mark.parametrize(("content", "reason"), [
    (lambda b: b[: len(b) // 2], "read error"),
    (lambda b: b[:3], "read error"),
    (lambda b: b"%PDF-1.7 " + b[9:], "not recognized"),
    (lambda b: b"", "read error"),
])
def test_damaged_or_foreign_index_file(tmp_path: Path, content, reason: str) -> None:
    folder = saved_index(tmp_path)
    file = folder / "index.faiss"
    file.write_bytes(content(file.read_bytes()))
    message = load_error(folder)
    assert message.startswith(f"{file}: not a readable FAISS index, truncated or of another format (")
    assert reason in message


def test_index_of_another_folder(tmp_path: Path) -> None:
    """A valid faiss file that belongs elsewhere: its row count or dimension disagrees with the folder."""
    folder = saved_index(tmp_path)
    (folder / "index.faiss").write_bytes(faiss.serialize_index(faiss.IndexFlatIP(8)).tobytes())
    assert load_error(folder) == "index holds 0 vectors but 20 doc ids"
    other = faiss.IndexFlatIP(4)
    other.add(np.zeros((20, 4), dtype=np.float32))
    (folder / "index.faiss").write_bytes(faiss.serialize_index(other).tobytes())
    assert load_error(folder) == "index dimension 4 differs from meta.json's 8"
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "dim"}))
    assert "meta.json: missing keys ['dim']" in load_error(folder)
