"""Triples files read through byte-offset indexes: same rows as a naive parse, id triples looked up like a
dict would, the windowed shuffle a resumable permutation, and bad rows failing with file:line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from sbmoe.data import DataFormatError, IdTriples, TextTriples, WindowShuffle, open_triples, read_triples
from sbmoe.data.line_index import KeyedLines, LineIndex


def naive_rows(text: str) -> list[str]:
    """Reference: the file's lines without blank ones (empty or a lone carriage return)."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r") != ""]


@pytest.mark.parametrize("text", [
    "a\tb\tc\nd\te\tf\n",
    "a\tb\tc\r\n\r\n\nd\te\tf",  # CRLF, blank lines, no final newline
    "\n\nx\ty\tz\n\n",
    "",
])
def test_line_index_rows_match_a_naive_split(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.tsv"
    path.write_bytes(text.encode())
    index = LineIndex(path)
    expected = naive_rows(text)
    assert len(index) == len(expected)
    rows = list(range(len(expected)))[::-1]  # any order, answered in the order asked
    assert [raw.decode() for raw in index.read(rows)] == [expected[r] for r in rows]


def test_read_triples_matches_the_file_on_a_large_random_file(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [tuple(" ".join(rng.choice("abcdefg") * rng.randint(1, 30) for _ in range(3)) for _ in range(3))
            for _ in range(3000)]
    text = "".join("\t".join(row) + ("\n\n" if i % 97 == 0 else "\n") for i, row in enumerate(rows))
    path = tmp_path / "big.tsv"
    path.write_text(text, encoding="utf-8")
    assert read_triples(path) == rows
    source = TextTriples(path)
    picks = [2999, 0, 1500, 1501, 7, 2998]
    assert source.rows(picks) == [rows[i] for i in picks]


def test_jsonl_triples_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"query": "q", "positive": "p", "negative": "n"}), "", '{"query": "q", "positive": "p"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = TextTriples(path)
    assert source.rows([0]) == [("q", "p", "n")]
    with pytest.raises(DataFormatError, match=r"t\.jsonl:3: expected JSON with query, positive, negative"):
        source.rows([1])
    path.write_text('{"query": ["q"], "positive": "p", "negative": "n"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"t\.jsonl:1: query, positive and negative must be strings"):
        read_triples(path)


def test_bad_text_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"q\tp\tn\n\nq\tp\t\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv:3: not valid UTF-8"):
        read_triples(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no training triples"):
        read_triples(path)


@pytest.fixture
def msmarco(tmp_path: Path) -> dict[str, Path]:
    """A tiny MS MARCO layout: queries with unsorted ids, a collection with sorted ids."""
    rng = random.Random(3)
    passages = {pid: f"passage {pid} " + "w" * rng.randint(0, 40) for pid in range(0, 400, 2)}
    queries = {qid: f"query {qid}?" for qid in rng.sample(range(10_000, 20_000), 50)}
    triples = [(rng.choice(list(queries)), rng.choice(list(passages)), rng.choice(list(passages))) for _ in range(300)]
    paths = {"collection": tmp_path / "collection.tsv", "queries": tmp_path / "queries.train.tsv",
             "triples": tmp_path / "qidpidtriples.tsv"}
    paths["collection"].write_text("".join(f"{k}\t{v}\n" for k, v in passages.items()), encoding="utf-8")
    paths["queries"].write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()), encoding="utf-8")
    paths["triples"].write_text("".join("\t".join(map(str, t)) + "\n" for t in triples), encoding="utf-8")
    paths["expected"] = [(queries[q], passages[p], passages[n]) for q, p, n in triples]  # type: ignore[assignment]
    return paths


def test_id_triples_resolve_texts_like_a_dict(msmarco: dict) -> None:
    source = open_triples(msmarco["triples"], msmarco["collection"], msmarco["queries"])
    assert isinstance(source, IdTriples) and len(source) == 300
    picks = np.array([299, 3, 150, 0, 3])
    assert source.rows(picks) == [msmarco["expected"][i] for i in picks]
    assert KeyedLines(msmarco["queries"]).rows is not None  # unsorted ids go through the order table
    assert KeyedLines(msmarco["collection"]).rows is None  # sorted ids are searched in place


def test_id_triples_errors_name_file_and_line(msmarco: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad_ids.tsv"
    qid = msmarco["queries"].read_text().split("\t")[0]
    bad.write_text(f"{qid}\t2\t4\n{qid}\t3\t4\n", encoding="utf-8")  # pid 3 is not in the collection
    source = IdTriples(bad, msmarco["collection"], msmarco["queries"])
    with pytest.raises(DataFormatError, match=r"bad_ids\.tsv:2: passage id 3 is not in .*collection\.tsv"):
        source.rows([0, 1])
    bad.write_text(f"{qid}\t2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad_ids\.tsv:1: expected qid<TAB>pos_pid<TAB>neg_pid"):
        IdTriples(bad, msmarco["collection"], msmarco["queries"]).rows([0])
    dup = tmp_path / "dup.tsv"
    dup.write_text("5\ta\n1\tb\n5\tc\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dup\.tsv:3: duplicate id 5"):
        KeyedLines(dup)
    words = tmp_path / "words.tsv"
    words.write_text("1\ta\n\nD7\tb\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"words\.tsv:3: id b'D7' is not an integer"):
        KeyedLines(words)
    with pytest.raises(ValueError, match="need both --collection and --queries-file"):
        open_triples(bad, msmarco["collection"], None)


@pytest.mark.parametrize(("n", "buffer"), [(1, 5), (97, 10), (1000, 64), (500, 5000)])
def test_window_shuffle_is_a_seeded_resumable_permutation(n: int, buffer: int) -> None:
    shuffle = WindowShuffle(n, buffer, seed=7)
    stream = np.concatenate(list(_take(shuffle.windows(0), 3 * n)))[: 3 * n]
    for epoch in range(3):  # every epoch is a permutation of the rows
        assert sorted(stream[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
    if n > 1:
        assert not np.array_equal(stream[:n], stream[n:2 * n])  # epochs differ
        assert not np.array_equal(stream[:n], np.arange(n))
    windows = list(_take(shuffle.windows(0), n))
    assert max(len(w) for w in windows) <= buffer  # memory: one buffer of rows
    for position in sorted({p for p in (0, 1, n // 2, n - 1, n, 2 * n + 3) if p < 3 * n}):  # resume anywhere
        resumed = np.concatenate(list(_take(shuffle.windows(position), 3 * n - position)))
        np.testing.assert_array_equal(resumed[: 3 * n - position], stream[position:])
    again = np.concatenate(list(_take(WindowShuffle(n, buffer, seed=7).windows(0), 3 * n)))[: 3 * n]
    np.testing.assert_array_equal(again, stream)


def _take(windows, rows: int):
    """Windows until at least ``rows`` rows were produced."""
    seen = 0
    for window in windows:
        if seen >= rows:
            return
        seen += len(window)
        yield window
