"""Adversarial BEIR files: each bad input fails with one line naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbmoe.data import BeirDataset, DataFormatError, read_queries

CORPUS = '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": 7, "text": "two"}\n'
QUERIES = '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t7\t1\n"


def make_dataset(root: Path, corpus: bytes | str = CORPUS, queries: bytes | str = QUERIES,
                 qrels: bytes | str = QRELS) -> BeirDataset:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, content in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        (root / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return BeirDataset(root, "toy", drop_self_hits=False)


def one_line_error(call) -> str:
    with pytest.raises(DataFormatError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_integer_ids_are_read_as_strings(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    assert [d.doc_id for d in ds.iter_corpus()] == ["d1", "7"]
    assert ds.load_split("test")[1] == {"q1": {"d1": 1}, "q2": {"7": 1}}


@pytest.mark.parametrize(("bad_id", "kind"), [('["d", 1]', "a list"), ('{"id": 1}', "an object"),
                                              ("true", "a boolean"), ("1.5", "a number with a fraction")])
def test_non_scalar_id_is_refused_in_corpus_and_queries(tmp_path: Path, bad_id: str, kind: str) -> None:
    bad_line = f'{{"_id": {bad_id}, "text": "x"}}\n'
    ds = make_dataset(tmp_path / "c", corpus=CORPUS + bad_line)
    message = one_line_error(lambda: list(ds.iter_corpus()))
    assert message.endswith(f"corpus.jsonl:3: field '_id' must be a string or an integer, not {kind}")
    ds = make_dataset(tmp_path / "q", queries=bad_line + QUERIES)
    assert one_line_error(ds.load_queries).endswith(f"queries.jsonl:1: field '_id' must be a string or an "
                                                    f"integer, not {kind}")


def test_duplicate_ids(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "c", corpus=CORPUS + '{"_id": "7", "text": "again"}\n')
    assert one_line_error(lambda: list(ds.iter_corpus())).endswith("corpus.jsonl:3: duplicate _id '7'")
    ds = make_dataset(tmp_path / "q", queries=QUERIES + '\n{"_id": "q1", "text": "again"}\n')
    assert one_line_error(lambda: ds.load_split("test")).endswith("queries.jsonl:4: duplicate _id 'q1'")
    (tmp_path / "q.tsv").write_text("a\tfirst\nb\tsecond\na\tthird\n", encoding="utf-8")
    assert one_line_error(lambda: read_queries(tmp_path / "q.tsv")).endswith("q.tsv:3: duplicate query id 'a'")


@pytest.mark.parametrize("target", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "queries.tsv"])
def test_non_utf8_bytes_name_file_and_line(tmp_path: Path, target: str) -> None:
    latin1 = "caf\u00e9".encode("latin-1")  # b"caf\xe9": valid Latin-1, invalid UTF-8
    files = {"corpus.jsonl": CORPUS.encode() + b'{"_id": "d3", "text": "' + latin1 + b'"}\n',
             "queries.jsonl": QUERIES.encode() + b'{"_id": "q3", "text": "' + latin1 + b'"}\n',
             "qrels/test.tsv": QRELS.encode() + b"q1\t" + latin1 + b"\t1\n"}
    if target == "queries.tsv":
        (tmp_path / "queries.tsv").write_bytes(b"a\tok\nb\t" + latin1 + b"\n")
        message = one_line_error(lambda: read_queries(tmp_path / "queries.tsv"))
        assert message.endswith("queries.tsv:2: not valid UTF-8 (byte 0xe9 at column 6)")
        return
    ds = make_dataset(tmp_path, **{target.split(".")[0].split("/")[0]: files[target]})
    message = one_line_error(lambda: (list(ds.iter_corpus()), ds.load_split("test")))
    line = {"corpus.jsonl": 3, "queries.jsonl": 3, "qrels/test.tsv": 4}[target]
    assert f"{target}:{line}: not valid UTF-8 (byte 0xe9" in message


def test_missing_text_and_empty_corpus(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "c", corpus=CORPUS + '{"_id": "d3", "title": "only a title"}\n')
    assert one_line_error(lambda: list(ds.iter_corpus())).endswith("corpus.jsonl:3: missing field 'text'")
    ds = make_dataset(tmp_path / "q", queries='{"_id": "q1"}\n')
    assert one_line_error(ds.load_queries).endswith("queries.jsonl:1: missing field 'text'")
    ds = make_dataset(tmp_path / "e", corpus="\n  \n")
    assert one_line_error(lambda: list(ds.iter_corpus())).endswith("corpus.jsonl: corpus is empty")


def test_empty_text_and_byte_order_mark_are_accepted(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, corpus="\ufeff" + '{"_id": "d1", "title": "T", "text": ""}\n{"_id": 7, "text": "x"}\n')
    assert [d.as_text() for d in ds.iter_corpus()] == ["T", "x"]
