"""Faults of stored files and of the disk, through the ``sbmoe`` command where a user meets them.

Each fault ends in exit code 1 and one line on stderr naming the file (no traceback), leaves nothing
half-written under the output, and, where the operation resumes, a rerun after the fault completes it.
A full disk is simulated below Python's file objects' callers: ``open``/``os.fdopen`` hand out files whose
``write`` raises ENOSPC after a byte budget, and for writers outside Python (safetensors in Rust) the kernel's
per-process file-size limit makes the write fail for real.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import logging
import os
import resource
import shutil
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_errors import fails_with_one_line
from typer.testing import CliRunner

from sbmoe.atomic import WriteFailedError
from sbmoe.cli import app
from sbmoe.data import registry
from sbmoe.lm.data import LMCorpus
from sbmoe.lm.train import CHECKPOINT, LMConfig, LMTrainConfig, save_checkpoint, train_lm
from sbmoe.models.embedding_cache import CorpusEmbeddingCache, EmbeddingKey

runner = CliRunner()
LM_SMALL = dict(vocab_size=64, seq_len=8, n_layer=1, n_head=2, d_model=16, experts_per_layer=2, expert_hidden=16,
                top_k=1)


def succeeds(*args: object) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporaries of the atomic writers (``.<name>.tmp-*``) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*tmp-*"))


class FillingFile:
    """A writable file whose ``write`` raises ENOSPC once ``budget`` bytes have gone through it (the bytes
    that fit are written first, as a real full disk does)."""

    def __init__(self, handle: Any, budget: int) -> None:
        self.handle, self.budget = handle, budget

    def write(self, data: Any) -> int:
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self.budget:
            fit = self.budget
            self.handle.write(data[:fit] if isinstance(data, str) else memoryview(data).cast("B")[:fit])
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= size
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


@contextmanager
def disk_fills(monkeypatch: pytest.MonkeyPatch, name: str, budget: int, skip: int = 0) -> Iterator[None]:
    """While active, the files opened for writing whose path contains ``name`` fill the disk after ``budget``
    bytes; the first ``skip`` such files are written in full."""
    real_open, real_fdopen = builtins.open, os.fdopen
    seen = [0]

    def wrap(handle: Any, path: str, mode: str) -> Any:
        if name not in os.path.basename(str(path)) or not any(c in mode for c in "wax+"):
            return handle
        seen[0] += 1
        return handle if seen[0] <= skip else FillingFile(handle, budget)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return wrap(real_open(file, mode, *args, **kwargs), str(file), mode)

    def fake_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return wrap(real_fdopen(fd, mode, *args, **kwargs), path, mode)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", fake_open)
        patch.setattr(io, "open", fake_open)
        patch.setattr(os, "fdopen", fake_fdopen)
        yield


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """The kernel refuses (EFBIG) every write past ``limit`` bytes of one file, in any language's writer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def count_encoded_documents(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch of documents the index command encodes, in order."""
    from sbmoe.index import builder
    from sbmoe.models import encoding

    sizes: list[int] = []
    real = encoding.encode_texts

    def counted(model: Any, texts: list[str], *args: Any, **kwargs: Any) -> np.ndarray:
        sizes.append(len(texts))
        return real(model, texts, *args, **kwargs)

    monkeypatch.setattr(encoding, "encode_texts", counted)
    monkeypatch.setattr(builder, "encode_texts", counted, raising=False)  # where the builder imports it at the top
    return sizes


@pytest.fixture
def model_copy(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))


# -- stored files that cannot be parsed ---------------------------------------------------------------------


@pytest.mark.parametrize(("file", "damage", "expected"), [
    ("model.safetensors", "truncate", "not a safetensors weights file"),
    ("tokenizer.json", b'{"version": "1.0", "model": ', "not a JSON file"),
    ("config.json", b"\xff\xfe not json", "not a JSON file"),
])
def test_damaged_model_file_is_named(model_copy: Path, scifact_slice: Path, tmp_path: Path, file: str,
                                     damage: bytes | str, expected: str) -> None:
    path = model_copy / file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)
    line = fails_with_one_line("index", scifact_slice, "-o", tmp_path / "out", "-m", model_copy, "--no-cache")
    assert line.startswith(f"error: {path}: {expected} (")
    assert "rerun the `sbmoe train` or `sbmoe export`" in line
    assert not (tmp_path / "out").exists()


def test_damaged_onnx_graph_is_named(model_copy: Path, scifact_slice: Path, tmp_path: Path) -> None:
    graph = model_copy / "onnx" / "model.onnx"
    graph.parent.mkdir()
    graph.write_bytes(b"\x08\x07 this is not a protobuf graph" * 4)
    line = fails_with_one_line("index", scifact_slice, "-o", tmp_path / "out", "-m", model_copy, "--backend",
                               "onnx", "--no-cache")
    assert line.startswith(f"error: {graph}: not a valid ONNX graph (")
    assert line.endswith("rerun `sbmoe export` to write the folder again")


def test_damaged_shard_is_named_and_resumes_once_removed(tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out, shards = tmp_path / "out", tmp_path / "out.shards"
    args = ("index", scifact_slice, "-o", out, "-m", tiny_bert_dir, "--chunk-size", "20", "--no-cache")
    with disk_fills(monkeypatch, "shard-00001.npy", budget=0):
        fails_with_one_line(*args)
    marker = shards / "shard-00000.json"
    marker.write_text('{"rows": 2', encoding="utf-8")
    line = fails_with_one_line(*args)
    assert line == (f"error: {marker}: not a shard marker (Expecting ',' delimiter: line 1 column 11 (char 10)); "
                    f"delete {marker} and rerun to encode that chunk again")
    marker.unlink()
    succeeds(*args)
    assert (out / "index.faiss").is_file() and not shards.exists()


def test_damaged_cache_entry_is_removed_with_a_warning_and_rebuilt(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    cache, key = CorpusEmbeddingCache(tmp_path / "cache"), EmbeddingKey("model", "corpus", 128, "mean")
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    folder = cache.put(key, ["a", "b", "c", "d"], vectors)
    data = (folder / "embeddings.npy").read_bytes()
    (folder / "embeddings.npy").write_bytes(data[:-8])  # a truncated entry
    with caplog.at_level(logging.WARNING, logger="sbmoe.models.embedding_cache"):
        assert cache.get(key) is None
    assert f"embedding cache entry {folder} is damaged" in caplog.text
    assert not folder.exists()
    cache.put(key, ["a", "b", "c", "d"], vectors)
    ids, again = cache.get(key)
    assert ids == ["a", "b", "c", "d"] and np.array_equal(again, vectors)


def lm_corpus() -> LMCorpus:
    stream = torch.randint(0, LM_SMALL["vocab_size"], (4000,), generator=torch.Generator().manual_seed(0))
    return LMCorpus(stream, stream[:400], {}, LM_SMALL["vocab_size"])


def lm_config(output: Path, steps: int = 4) -> LMTrainConfig:
    return LMTrainConfig(model=LMConfig(**LM_SMALL), steps=steps, batch_size=2, eval_every=2, eval_batches=1,
                         output=output, show_progress=False)


def test_damaged_lm_checkpoint_is_named(tmp_path: Path) -> None:
    train_lm(lm_config(tmp_path, steps=2), lm_corpus())
    checkpoint = tmp_path / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    line = fails_with_one_line("lm", "eval", tmp_path)
    assert line.startswith(f"error: {checkpoint}: not an sbmoe LM checkpoint (model, config, history) (")
    assert line.endswith("rerun `sbmoe lm train` into this folder")


class Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for any code a foreign checkpoint could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_checkpoint_whose_pickle_runs_code_is_refused(tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    run.mkdir()
    torch.save({"model": {}, "config": {"model": {}}, "history": [], "payload": Payload(marker)}, run / CHECKPOINT)
    line = fails_with_one_line("lm", "eval", run)
    assert line.startswith(f"error: {run / CHECKPOINT}: refused: its pickle names ")
    assert "loading it could run code" in line
    assert not marker.exists()
    torch.load(run / CHECKPOINT, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


# -- a full disk ---------------------------------------------------------------------------------------------


def test_full_disk_while_indexing_keeps_complete_shards_and_resumes(tiny_bert_dir: Path, scifact_slice: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out, shards = tmp_path / "out", tmp_path / "out.shards"
    args = ("index", scifact_slice, "-o", out, "-m", tiny_bert_dir, "--chunk-size", "20", "--no-cache")
    encoded = count_encoded_documents(monkeypatch)
    with disk_fills(monkeypatch, "shard-00001.npy", budget=1000):
        line = fails_with_one_line(*args)
    vectors = shards / "shard-00001.npy"
    assert line.startswith(f"error: {vectors}: write failed: No space left on device (2,560 bytes needed, ")
    assert "bytes free)" in line and line.endswith("free space and rerun the same command")
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    assert sorted(p.name for p in shards.iterdir()) == ["manifest.json", "shard-00000.ids.txt", "shard-00000.json",
                                                        "shard-00000.npy"]
    assert encoded == [20, 20]  # shard 0 written, shard 1 refused
    with disk_fills(monkeypatch, "index.faiss", budget=100):  # the shards complete; the index file fails
        line = fails_with_one_line(*args)
    assert line.startswith(f"error: {out}: write failed: No space left on device (")
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    assert (shards / "shard-00002.json").is_file()
    assert encoded == [20, 20, 20, 10]  # the rerun encoded shards 1 and 2 only
    succeeds(*args)
    assert encoded == [20, 20, 20, 10]  # every shard was complete: the index was built from them
    assert (out / "doc_ids.txt").read_text(encoding="utf-8").count("\n") == 50
    assert not shards.exists() and hidden_leftovers(tmp_path) == []


def test_full_disk_in_the_embedding_cache_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, key = CorpusEmbeddingCache(tmp_path / "cache"), EmbeddingKey("model", "corpus", None, "cls")
    vectors = np.ones((64, 8), dtype=np.float32)
    with disk_fills(monkeypatch, "embeddings.npy", budget=512), pytest.raises(WriteFailedError) as failed:
        cache.put(key, [str(i) for i in range(64)], vectors)
    assert str(failed.value).startswith(f"{cache.path(key)}: write failed: No space left on device "
                                        f"({64 * 8 * 4:,} bytes needed, ")
    assert list((tmp_path / "cache").iterdir()) == []
    cache.put(key, [str(i) for i in range(64)], vectors)
    assert np.array_equal(cache.get(key)[1], vectors)


def test_full_disk_at_an_lm_checkpoint_keeps_the_last_one_and_resumes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = lm_corpus()
    with disk_fills(monkeypatch, CHECKPOINT, budget=4096, skip=1), pytest.raises(WriteFailedError) as failed:
        train_lm(lm_config(tmp_path), corpus)  # the step-2 checkpoint is saved, the step-4 one fails
    assert str(failed.value).startswith(f"{tmp_path / CHECKPOINT}: write failed: No space left on device (")
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 2
    _, history = train_lm(lm_config(tmp_path), corpus)  # the rerun resumes at step 2
    assert [h["step"] for h in history] == [2, 4]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4


def test_full_disk_through_the_cli_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fault at ``sbmoe lm train``'s checkpoint: the command's own line, no traceback."""
    corpus = lm_corpus()
    monkeypatch.setattr(LMCorpus, "build", classmethod(lambda cls, **kw: corpus))
    args = ["lm", "train", "-o", tmp_path, "--steps", "2", "--eval-every", "2", "--batch-size", "2", "--seq-len",
            "8", "--vocab", "64", "--layers", "1", "--d-model", "16", "--experts", "2", "--expert-hidden", "16",
            "--top-k", "1"]
    with disk_fills(monkeypatch, CHECKPOINT, budget=4096):
        line = fails_with_one_line(*args)
    assert line.startswith(f"error: {tmp_path / CHECKPOINT}: write failed: No space left on device (")
    assert not (tmp_path / CHECKPOINT).exists() and hidden_leftovers(tmp_path) == []


def test_write_refused_by_the_kernel_during_export(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """safetensors writes from Rust: the fault comes back as its own error class and is still one line."""
    out = tmp_path / "exported"
    with file_size_limit(256 * 1024):
        line = fails_with_one_line("export", tiny_bert_dir, out)
    assert line.startswith(f"error: {out}: write failed: ") and "File too large" in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_save_checkpoint_helper_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing checkpoint survives a failed save of the next one, byte for byte."""
    train_lm(lm_config(tmp_path, steps=2), lm_corpus())
    before = (tmp_path / CHECKPOINT).read_bytes()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    from sbmoe.lm.model import MoELM

    model = MoELM(LMConfig(**LM_SMALL))
    optimizer = torch.optim.AdamW(model.parameters())
    with disk_fills(monkeypatch, CHECKPOINT, budget=10), pytest.raises(WriteFailedError):
        save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, torch.Generator(), 3, state["history"],
                        lm_config(tmp_path))
    assert (tmp_path / CHECKPOINT).read_bytes() == before and hidden_leftovers(tmp_path) == []


# -- downloads -----------------------------------------------------------------------------------------------


def beir_zip(path: Path, name: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/corpus.jsonl", '{"_id": "d1", "text": "aspirin"}\n')
        archive.writestr(f"{name}/queries.jsonl", '{"_id": "q1", "text": "aspirin"}\n')
        archive.writestr(f"{name}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return path


def test_download_with_another_md5_is_refused_before_unpacking(tmp_path: Path, isolated_cache: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    archive = beir_zip(tmp_path / "nfcorpus.zip", "nfcorpus")
    published = registry.KNOWN_DATASETS["nfcorpus"]
    assert published.md5 == "a89dba18a62ef92f7d323ec890a0d38d"  # BEIR's README lists this sum
    monkeypatch.setitem(registry.KNOWN_DATASETS, "nfcorpus", replace(published, url=archive.as_uri()))
    monkeypatch.setenv("SBMOE_DATA", str(tmp_path / "no-data"))
    line = fails_with_one_line("index", "nfcorpus", "-o", tmp_path / "out", "-m", "minilm")
    actual = hashlib.md5(archive.read_bytes()).hexdigest()
    assert line == (f"error: {archive.as_uri()}: md5 {actual} differs from the published "
                    f"a89dba18a62ef92f7d323ec890a0d38d ({archive.stat().st_size:,} bytes received): refused, "
                    "nothing was written")
    downloads = isolated_cache / "datasets"
    assert not downloads.exists() or list(downloads.iterdir()) == []
    monkeypatch.setitem(registry.KNOWN_DATASETS, "nfcorpus", replace(published, url=archive.as_uri(), md5=actual))
    assert registry.resolve_dataset("nfcorpus") == downloads / "nfcorpus"
    assert (downloads / "nfcorpus" / "corpus.jsonl").is_file()
