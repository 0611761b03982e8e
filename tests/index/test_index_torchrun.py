"""``torchrun --nproc_per_node 2 sbmoe index``: each rank encodes its chunks into shards, rank 0 builds the
index, and searching it gives the same top-k as an index built by one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sbmoe.index.faiss_index import DenseIndex
from sbmoe.index.retriever import Retriever
from sbmoe.models.encoder import EncoderConfig


def test_two_process_index_gives_the_one_process_top_k(tiny_bert_dir: Path, scifact_slice: Path,
                                                       tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["index", str(scifact_slice), "--model", str(tiny_bert_dir), "--chunk-size", "8", "--no-cache",
              "--keep-shards"]
    one = subprocess.run([sys.executable, "-m", "sbmoe.cli", *common, "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "sbmoe.cli", *common, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("indexed 50 documents") == 1  # rank 0 builds and reports

    shards = sorted((tmp_path / "two.shards").glob("shard-*.json"))
    assert len(shards) == 7  # 50 documents in chunks of 8, dealt to the two ranks
    assert [json.loads(p.read_text())["rows"] for p in shards] == [8] * 6 + [2]

    single, parallel = DenseIndex.load(tmp_path / "one"), DenseIndex.load(tmp_path / "two")
    assert parallel.doc_ids == single.doc_ids
    queries = {json.loads(line)["_id"]: json.loads(line)["text"]
               for line in (scifact_slice / "queries.jsonl").read_text().splitlines()}
    config = EncoderConfig(model=str(tiny_bert_dir))
    hits_one = Retriever.from_index(tmp_path / "one", config).search(queries, k=10)
    hits_two = Retriever.from_index(tmp_path / "two", config).search(queries, k=10)
    assert hits_one.keys() == hits_two.keys() and len(hits_one) == len(queries)
    for qid, ranked in hits_one.items():
        assert list(ranked) == list(hits_two[qid]), qid
        np.testing.assert_allclose(list(ranked.values()), list(hits_two[qid].values()), rtol=1e-6, atol=1e-6)
