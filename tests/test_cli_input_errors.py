"""Bad input through the ``sbmoe`` command: exit 1, one line on stderr naming file/line/field, no traceback,
and no output file or folder left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from cli_errors import fails_with_one_line
from typer.testing import CliRunner

from sbmoe.cli import app

runner = CliRunner()
CORPUS = '{"_id": "d1", "text": "aspirin and heart attacks"}\n{"_id": "d2", "text": "statins lower cholesterol"}\n'
QUERIES = '{"_id": "q1", "text": "aspirin"}\n{"_id": "q2", "text": "cholesterol"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def collection(root: Path, corpus: bytes | str = CORPUS, queries: bytes | str = QUERIES) -> Path:
    (root / "qrels").mkdir(parents=True)
    for name, content in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", QRELS)):
        (root / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.lstrip(".").startswith(name))


@pytest.mark.parametrize(("corpus", "message"), [
    (CORPUS + '{"_id": ["d", 3], "text": "x"}\n',
     "corpus.jsonl:3: field '_id' must be a string or an integer, not a list"),
    (CORPUS + '{"_id": "d1", "text": "again"}\n', "corpus.jsonl:3: duplicate _id 'd1'"),
    (CORPUS.encode() + b'{"_id": "d3", "text": "\xff\xfe"}\n',
     "corpus.jsonl:3: not valid UTF-8 (byte 0xff at column 24)"),
    (CORPUS + '{"_id": "d3", "title": "no text"}\n', "corpus.jsonl:3: missing field 'text'"),
    ("\n", "corpus.jsonl: corpus is empty"),
])
def test_index_refuses_bad_corpus(tiny_bert_dir: Path, tmp_path: Path, corpus: bytes | str, message: str) -> None:
    data = collection(tmp_path / "bad", corpus=corpus)
    line = fails_with_one_line("index", data, "-o", tmp_path / "idx", "-m", tiny_bert_dir, "--chunk-size", "2")
    assert line.endswith(message), line
    assert leftovers(tmp_path, "idx") == []


@pytest.mark.parametrize(("queries", "message"), [
    ('{"_id": {"n": 1}, "text": "x"}\n', "queries.jsonl:1: field '_id' must be a string or an integer, not an object"),
    (QUERIES + '{"_id": "q2", "text": "again"}\n', "queries.jsonl:3: duplicate _id 'q2'"),
    (b'{"_id": "q1", "text": "caf\xe9"}\n', "queries.jsonl:1: not valid UTF-8 (byte 0xe9 at column 27)"),
    ('{"_id": "q1", "query": "wrong key"}\n', "queries.jsonl:1: missing field 'text'"),
])
def test_eval_and_search_refuse_bad_queries(tiny_bert_dir: Path, tmp_path: Path, queries: bytes | str,
                                            message: str) -> None:
    data = collection(tmp_path / "bad", queries=queries)
    line = fails_with_one_line("eval", "-m", tiny_bert_dir, "-d", data, "--output-dir", tmp_path / "results")
    assert line.endswith(message), line
    assert not (tmp_path / "results" / "eval.json").exists()


@pytest.fixture(scope="module")
def built_index(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-index")
    result = runner.invoke(app, ["index", str(collection(root / "good")), "-o", str(root / "idx"), "-m",
                                 str(tiny_bert_dir)])
    assert result.exit_code == 0, result.output
    return root / "idx"


def damaged_copy(index: Path, folder: Path, content: bytes) -> Path:
    copy = folder / "damaged"
    shutil.copytree(index, copy)
    (copy / "index.faiss").write_bytes(content)
    return copy


@pytest.mark.parametrize("damage", ["truncated", "zip", "empty"])
def test_search_refuses_damaged_or_foreign_index_file(built_index: Path, tmp_path: Path, damage: str) -> None:
    original = (built_index / "index.faiss").read_bytes()
    content = {"truncated": original[: len(original) // 2], "zip": b"PK\x03\x04" + b"\0" * 60, "empty": b""}[damage]
    index = damaged_copy(built_index, tmp_path, content)
    line = fails_with_one_line("search", "-i", index, "-q", built_index.parent / "good", "-o", tmp_path / "r.trec")
    assert f"{index / 'index.faiss'}: not a readable FAISS index, truncated or of another format" in line
    assert not (tmp_path / "r.trec").exists()


def test_search_refuses_model_of_another_dimension(built_index: Path, tmp_path: Path) -> None:
    """A well-formed 16-d index searched with the 32-d encoder: one line naming both dimensions."""
    other = faiss.IndexFlatIP(16)
    other.add(np.random.default_rng(0).random((2, 16), dtype=np.float32))
    index = damaged_copy(built_index, tmp_path, faiss.serialize_index(other).tobytes())
    meta = json.loads((index / "meta.json").read_text())
    (index / "meta.json").write_text(json.dumps({**meta, "dim": 16}))
    line = fails_with_one_line("search", "-i", index, "-q", built_index.parent / "good", "-o", tmp_path / "r.trec")
    assert line.startswith("error: encoder produces 32-d embeddings but the index holds 16-d vectors"), line
    assert not (tmp_path / "r.trec").exists()
