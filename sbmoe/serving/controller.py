"""The one object REST and MCP share: the loaded indexes, searching them (dense, BM25, hybrid), their
documents and facts, scoring runs, and swapping a rebuilt folder in without stopping.

Every input check lives here, so both skins refuse the same requests with the same one-line messages.
Index names resolve only to the folders given at start: nothing a request sends becomes a path.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..runs import Run, SelfHits
from .batcher import DynamicBatcher
from .config import MODES, BatchConfig, IndexSpec, Limits
from .errors import NotFound, Overloaded, ReloadRefused, RequestError, one_line
from .metrics import ServeMetrics

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN_BOUND = 32  # a text longer than max_query_tokens * this is refused without tokenizing it
MAX_QID_CHARS = 256
PROBE_QUERY = "probe query"
# meta.json keys that describe the index rather than the encoder: indexes that differ only in these share a model
INDEX_ONLY_KEYS = frozenset({"count", "factory", "metric", "build_params", "search_params", "corpus_fingerprint",
                             "sbmoe_version", "dataset"})


@dataclass
class ServedIndex:
    """One loaded generation of an index folder; a reload builds a new one and swaps it in."""

    spec: IndexSpec
    retriever: Any  # sbmoe.index.retriever.Retriever
    bm25: Any | None  # sbmoe.bm25.engines.LuceneBM25
    lookup: Any | None  # sbmoe.index.hits.CorpusLookup; None when the corpus is not on this machine
    tokenizer: Any
    generation: int
    loaded_at: float = field(default_factory=time.time)
    row_of: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def meta(self) -> Any:
        return self.retriever.index.meta

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def probe(self) -> None:
        """One query end to end (encode, search) before this generation may serve."""
        run = self.retriever.index.run(["probe"], self.retriever.encode_queries([PROBE_QUERY]), 1)
        if self.meta.count and not run.get("probe"):
            raise RuntimeError("the index returned no hit for a probe query")

    def facts(self) -> dict[str, Any]:
        """What a client may know about the index (Anserini's keys first, then sbmoe's)."""
        meta = self.meta
        corpus = Path(meta.dataset).name if meta.dataset else None  # a folder's name, not the server's path
        return {
            "indexName": self.name, "cached": True,
            "description": f"sbmoe {meta.factory} index of {corpus or 'an unnamed corpus'} encoded with {meta.model}",
            "model": meta.model, "corpus": corpus, "model_fingerprint": meta.model_fingerprint,
            "index_type": meta.factory, "count": meta.count, "dim": meta.dim, "backend": meta.backend,
            "modes": [m for m in MODES if m == "dense" or self.bm25 is not None], "texts": self.lookup is not None,
            "generation": self.generation,
            "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(timespec="seconds"),
        }


def encoder_key(meta_path: Path) -> str:
    """The encoder settings of an index's meta.json: two indexes with the same key share one loaded model."""
    from ..index.faiss_index import IndexMeta

    IndexMeta.from_json(meta_path)  # a damaged meta.json fails here, with its one-line reason
    raw = json.loads(meta_path.read_text(encoding="utf-8"))
    return json.dumps({k: v for k, v in raw.items() if k not in INDEX_ONLY_KEYS}, sort_keys=True)


def load_served(spec: IndexSpec, generation: int, encoders: dict[str, tuple[Any, Any]]) -> ServedIndex:
    """Open an index folder (and its BM25 folder) through the public API; reuse an already loaded encoder.

    ``encoders`` maps an encoder key to (model, a tokenizer copy for counting query tokens on the event loop):
    the copy is made once, when the model is fresh, never while the worker may be encoding with it (a fast
    tokenizer used from two threads at once fails with "Already borrowed")."""
    from ..bm25.engines import BM25Config, LuceneBM25
    from ..index.faiss_index import META_FILE, IndexMismatchError
    from ..index.hits import CorpusLookup
    from ..index.retriever import Retriever

    if not spec.path.is_dir():
        raise FileNotFoundError(f"{spec.path}: index folder not found")
    key = encoder_key(spec.path / META_FILE)
    model, tokenizer = encoders.get(key, (None, None))
    retriever = Retriever.from_index(spec.path, model)
    if retriever.model is not model:
        tokenizer = copy.deepcopy(retriever.model.tokenizer)
        encoders[key] = (retriever.model, tokenizer)
    meta = retriever.index.meta
    try:
        lookup = CorpusLookup.for_index(meta.dataset, meta.corpus_fingerprint)
    except IndexMismatchError as exc:
        logger.warning("%s: hits served without titles and texts: %s", spec.name, exc)
        lookup = None
    bm25 = LuceneBM25(spec.bm25_path, BM25Config()) if spec.bm25_path is not None else None
    served = ServedIndex(spec, retriever, bm25, lookup, tokenizer, generation)
    served.row_of = {doc_id: row for row, doc_id in enumerate(retriever.index.doc_ids)}
    return served


class SearchController:
    """The indexes, the batcher in front of the encoder, and the BM25 worker; REST and MCP call only this."""

    def __init__(self, specs: Sequence[IndexSpec], limits: Limits | None = None, batch: BatchConfig | None = None,
                 metrics: ServeMetrics | None = None) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.limits = limits or Limits()
        self.batch_config = batch or BatchConfig()
        self.metrics = metrics or ServeMetrics()
        self.served: dict[str, ServedIndex] = {}
        self._encoders: dict[str, tuple[Any, Any]] = {}
        self.batcher = DynamicBatcher(self.batch_config, self.limits.max_queue, self.metrics,
                                      others_arriving=lambda: self.metrics.in_flight)
        self._bm25_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbmoe-bm25")
        self._bm25_waiting = 0
        self._reload_lock: asyncio.Lock | None = None
        self.metrics.generations = lambda: {name: s.generation for name, s in self.served.items()}

    # ---- life cycle ------------------------------------------------------------------------------------

    def load(self) -> SearchController:
        """Load every index (at start; a failure here is the user's one-line error) and probe each."""
        for spec in self.specs.values():
            served = load_served(spec, 1, self._encoders)
            served.probe()
            self.served[spec.name] = served
        return self

    async def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._bm25_worker.shutdown(wait=True)

    # ---- lookups ---------------------------------------------------------------------------------------

    def get(self, name: str) -> ServedIndex:
        served = self.served.get(name)
        if served is None:
            raise NotFound(f"no index named {name!r} (indexes: {', '.join(self.served)})")
        return served

    def default_index(self) -> str:
        return next(iter(self.served))

    def indexes(self) -> dict[str, dict[str, Any]]:
        return {name: served.facts() for name, served in self.served.items()}

    def document(self, name: str, doc_id: str) -> dict[str, str]:
        """Title and text of one document, by id."""
        served = self.get(name)
        row = served.row_of.get(doc_id)
        if row is None:
            raise NotFound(f"index {name!r} has no document {doc_id!r}")
        found = self._texts(served, [doc_id])[0]
        if found is None:
            raise NotFound(f"the texts of index {name!r} are not available on this server (its corpus "
                           f"{served.facts()['corpus']!r} is not here)")
        return {"title": found[0], "text": found[1]}

    # ---- searching -------------------------------------------------------------------------------------

    def check_k(self, k: int, name: str = "k") -> int:
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(f"{name} must be between 1 and {self.limits.max_k} (--max-k), got {k}")
        return k

    def check_queries(self, served: ServedIndex, queries: Sequence[tuple[str | None, str]]) -> tuple[list, list]:
        """Query ids (given, or "0", "1", ...) and texts; empty, over-long or repeated ones are refused."""
        if not queries:
            raise RequestError("give at least one query")
        if len(queries) > self.limits.max_queries:
            raise RequestError(f"{len(queries)} queries in one request; the limit is {self.limits.max_queries} "
                               "(--max-queries)")
        qids, texts = [], []
        limit = self.limits.max_query_tokens
        for position, (qid, text) in enumerate(queries):
            if not text or not text.strip():
                raise RequestError(f"query {position} is empty")
            if len(text) > limit * CHARS_PER_TOKEN_BOUND or served.count_tokens(text) > limit:
                raise RequestError(f"query {position} is longer than {limit} tokens (--max-query-tokens)")
            qid = str(position) if qid is None else qid
            if not qid or len(qid) > MAX_QID_CHARS:
                raise RequestError(f"query {position}: a qid must have 1 to {MAX_QID_CHARS} characters")
            qids.append(qid)
            texts.append(text)
        if len(set(qids)) != len(qids):
            repeated = next(q for q in qids if qids.count(q) > 1)
            raise RequestError(f"query ids must be unique; {repeated!r} appears more than once")
        return qids, texts

    def check_mode(self, served: ServedIndex, mode: str) -> str:
        if mode not in MODES:
            raise RequestError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "dense" and served.bm25 is None:
            raise RequestError(f"index {served.name!r} has no BM25 index, so mode {mode} is not available (start "
                               f"the server with --bm25 {served.name}=DIR)")
        return mode

    async def run(self, name: str, queries: Sequence[tuple[str | None, str]], k: int, mode: str = "dense",
                  drop_self_hits: SelfHits = False) -> tuple[ServedIndex, list[str], list[str], Run]:
        """Check a request and search it within the time limit: (index, qids, texts, {qid: {doc id: score}})."""
        served = self.get(name)
        self.check_mode(served, mode)
        self.check_k(k)
        qids, texts = self.check_queries(served, queries)
        run = await self.timed(self._search(served, qids, texts, k, mode, drop_self_hits))
        self.metrics.queries.inc(len(qids), index=name, mode=mode)
        return served, qids, texts, run

    async def timed(self, work: Any) -> Any:
        """Await ``work`` for at most the request time limit; past it, 503 and the work's result is dropped."""
        try:
            return await asyncio.wait_for(work, self.limits.request_timeout_s)
        except TimeoutError:
            self.metrics.rejected.inc(reason="timeout")
            raise Overloaded(f"the request took longer than {self.limits.request_timeout_s:g} s "
                             "(--request-timeout); retry, or ask for fewer queries") from None

    async def _search(self, served: ServedIndex, qids: list[str], texts: list[str], k: int, mode: str,
                      drop_self_hits: SelfHits) -> Run:
        if mode == "dense":
            return await self.batcher.search(served, qids, texts, k, drop_self_hits)
        if mode == "bm25":
            return await self._bm25(served, qids, texts, k, drop_self_hits)
        from ..bm25.fusion import fuse

        depth = max(k, self.batch_config.hybrid_depth)
        dense, sparse = await asyncio.gather(self.batcher.search(served, qids, texts, depth, drop_self_hits),
                                             self._bm25(served, qids, texts, depth, drop_self_hits))
        return fuse(dense, sparse, "rrf", depth=k)

    async def _bm25(self, served: ServedIndex, qids: list[str], texts: list[str], k: int,
                    drop_self_hits: SelfHits) -> Run:
        if self._bm25_waiting >= self.limits.max_queue:
            self.metrics.rejected.inc(reason="queue_full")
            raise Overloaded(f"server busy: {self.limits.max_queue} BM25 requests are waiting; retry shortly")
        self._bm25_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._bm25_worker, served.bm25.search, dict(zip(qids, texts, strict=True)), k, drop_self_hits)
        finally:
            self._bm25_waiting -= 1

    def _texts(self, served: ServedIndex, doc_ids: Sequence[str]) -> list[tuple[str, str] | None]:
        """(title, text) per doc id, None where the corpus is not here or does not hold the id."""
        from ..data import DataFormatError

        out: list[tuple[str, str] | None] = [None] * len(doc_ids)
        known = [(i, served.row_of[d]) for i, d in enumerate(doc_ids) if d in served.row_of]
        if served.lookup is None or not known:
            return out
        try:
            found = served.lookup.documents([row for _, row in known], [doc_ids[i] for i, _ in known])
        except DataFormatError as exc:  # the corpus file changed under the server
            logger.warning("%s: texts unavailable: %s", served.name, exc)
            return out
        for (i, _), pair in zip(known, found, strict=True):
            out[i] = pair
        return out

    def hit_list(self, served: ServedIndex, hits: dict[str, float], full_text: bool = False) -> list[dict]:
        """Ranked hits with title and snippet (or the whole text), as both skins return them."""
        from ..index.hits import snippet

        doc_ids = list(hits)
        texts = self._texts(served, doc_ids)
        out = []
        for rank, (doc_id, found) in enumerate(zip(doc_ids, texts, strict=True), start=1):
            hit: dict[str, Any] = {"rank": rank, "docid": doc_id, "score": hits[doc_id],
                                   "title": found[0] if found else None}
            if full_text:
                hit["text"] = found[1] if found else None
            else:
                hit["snippet"] = snippet(found[1]) if found else None
            out.append(hit)
        return out

    async def search(self, name: str, queries: Sequence[tuple[str | None, str]], k: int = 10,
                     mode: str = "dense") -> dict[str, Any]:
        """Hits for a list of (qid or None, text): {"index", "mode", "k", "results": [{qid, query, hits}]}."""
        served, qids, texts, run = await self.run(name, queries, k, mode)
        results = [{"qid": qid, "query": text, "hits": self.hit_list(served, run.get(qid, {}))}
                   for qid, text in zip(qids, texts, strict=True)]
        return {"index": name, "mode": mode, "k": k, "results": results}

    async def fuse(self, query: str, sources: Sequence[tuple[str, str]], k: int = 10) -> dict[str, Any]:
        """Reciprocal-rank fusion of one query's rankings from several (index, mode) pairs."""
        from ..bm25.fusion import reciprocal_rank_fusion

        if not 1 <= len(sources) <= 8:
            raise RequestError("fuse needs 1 to 8 (index, mode) sources")
        self.check_k(k)
        depth = min(max(k, self.batch_config.hybrid_depth), self.limits.max_k)
        runs = await asyncio.gather(*(self.run(index, [("q", query)], depth, mode) for index, mode in sources))
        fused = reciprocal_rank_fusion([run for *_, run in runs], depth=k).get("q", {})
        return {"query": query, "sources": [{"index": i, "mode": m} for i, m in sources], "k": k,
                "hits": self.hit_list(runs[0][0], fused)}

    # ---- scoring ---------------------------------------------------------------------------------------

    async def evaluate(self, name: str, split: str | None = None, metrics: Sequence[str] | None = None,
                       run: Run | None = None, mode: str = "dense", k: int = 100) -> dict[str, Any]:
        """Score a run (given, or this index's own run of the split's judged queries) against the qrels of
        the corpus the index was built from."""
        from ..data import BeirDataset, DataFormatError
        from ..evaluation.metrics import DEFAULT_METRICS, MetricError, evaluate_run, parse_metrics

        served = self.get(name)
        metric_names = list(metrics or DEFAULT_METRICS)
        try:
            parse_metrics(metric_names)
        except MetricError as exc:
            raise RequestError(str(exc)) from None
        if not served.meta.dataset:
            raise RequestError(f"index {name!r} does not name its corpus, so there are no qrels to score against")
        try:
            dataset = await asyncio.to_thread(BeirDataset.open, served.meta.dataset, download=False)
        except (DataFormatError, FileNotFoundError, ValueError) as exc:
            raise NotFound(f"the corpus of index {name!r} is not available on this server: {exc}") from None
        splits = sorted(path.stem for path in (dataset.root / "qrels").glob("*.tsv"))
        split = split or dataset.default_split
        if split not in splits:  # the only way a request names a file: one of these, listed by the server
            raise NotFound(f"{dataset.name} has no qrels split {split!r} (splits: {', '.join(splits) or 'none'})")
        try:
            if run is None:
                self.check_mode(served, mode)
                queries, qrels = await asyncio.to_thread(dataset.load_split, split)
                if len(queries) > self.limits.max_eval_queries:
                    raise RequestError(f"{dataset.name} {split} has {len(queries)} judged queries; the limit is "
                                       f"{self.limits.max_eval_queries} (--max-eval-queries)")
                self.check_k(k)
                qids = list(queries)
                run = await self.timed(self._search(served, qids, [queries[q] for q in qids], k, mode,
                                                    dataset.drop_self_hits or False))
                self.metrics.queries.inc(len(qids), index=name, mode=mode)
                source = f"{mode} search of this index, k={k}"
            else:
                self._check_run(run)
                qrels = await asyncio.to_thread(dataset.load_qrels, split)
                source = "the given run"
            scores = await asyncio.to_thread(evaluate_run, qrels, run, metric_names)
        except DataFormatError as exc:
            raise RequestError(f"the qrels of {dataset.name} could not be read: {exc}") from None
        return {"index": name, "dataset": dataset.name, "split": split, "run": source, "queries": len(run),
                "judged_queries": len(qrels), "metrics": scores}

    def _check_run(self, run: Run) -> None:
        if not run:
            raise RequestError("the run is empty")
        if len(run) > self.limits.max_eval_queries:
            raise RequestError(f"the run has {len(run)} queries; the limit is {self.limits.max_eval_queries}")
        longest = max(len(hits) for hits in run.values())
        if longest > self.limits.max_k:
            raise RequestError(f"a query of the run has {longest} hits; the limit is {self.limits.max_k}")

    # ---- reloading -------------------------------------------------------------------------------------

    async def reload(self, name: str | None = None) -> dict[str, int]:
        """Load each named folder again (all without a name), probe it, and swap it in; requests already
        searching finish on the old generation. A folder that fails keeps its old generation serving."""
        names = [self.get(name).name] if name is not None else list(self.served)
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        reloaded, refused = {}, {}
        async with self._reload_lock:
            for index_name in names:
                old = self.served[index_name]
                try:
                    new = await asyncio.to_thread(load_served, self.specs[index_name], old.generation + 1,
                                                  self._encoders)
                    await self.batcher.call(new.probe)
                except Exception as exc:  # any failure to load refuses the folder; the old one keeps serving
                    self.metrics.reloads.inc(index=index_name, outcome="refused")
                    logger.warning("reload of %s refused, generation %d keeps serving: %s", index_name,
                                   old.generation, one_line(exc))
                    refused[index_name] = f"{one_line(exc, 200)} (generation {old.generation} keeps serving)"
                    continue
                self.served[index_name] = new  # one assignment: the next request sees the new generation
                self.metrics.reloads.inc(index=index_name, outcome="ok")
                logger.warning("reloaded %s: generation %d, %d documents", index_name, new.generation,
                               new.meta.count)
                reloaded[index_name] = new.generation
            self._drop_unused_encoders()
        if refused:
            raise ReloadRefused("reload refused for " + "; ".join(f"{n}: {why}" for n, why in refused.items())
                                + (f"; reloaded {', '.join(reloaded)}" if reloaded else ""))
        return reloaded

    def _drop_unused_encoders(self) -> None:
        used = {id(served.retriever.model) for served in self.served.values()}
        for key in [key for key, (model, _) in self._encoders.items() if id(model) not in used]:
            del self._encoders[key]
