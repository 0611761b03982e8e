"""Self-hits decided from the data: which queries are themselves documents of the corpus.

BEIR drops a hit whose id equals the query id (``ignore_identical_ids``). That is right where each
query is a document of the corpus (ArguAna, Quora) and wrong where query and document ids are both
small integers that mean different things (Cranfield): there a relevant document whose id happens to
equal the query id would vanish. For a collection the registry does not know, a query's self-hit is
dropped only if the document with its id holds the query's own text (equal, or the query is the start
of the document after normalising case, punctuation and spaces).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .document import Document

_NON_WORD = re.compile(r"[\W_]+")
MIN_PREFIX_WORDS = 3  # a shorter query is "the start of a document" too easily by chance


def normalize_text(text: str) -> str:
    """Lower case, punctuation and runs of spaces collapsed to one space."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def holds_query_text(query: str, doc: Document) -> bool:
    """Whether ``doc`` carries ``query``'s text: equal to its text or title + text, or beginning with it."""
    wanted = normalize_text(query)
    if not wanted:
        return False
    for candidate in (normalize_text(doc.text), normalize_text(doc.as_text())):
        if candidate == wanted:
            return True
        if len(wanted.split()) >= MIN_PREFIX_WORDS and (candidate + " ").startswith(wanted + " "):
            return True
    return False


@dataclass(frozen=True)
class SelfHitDecision:
    """The outcome of the check for one collection: which query ids lose their self-hit, and why."""

    name: str
    queries: int
    shared_ids: int  # query ids that are also document ids
    self_queries: frozenset[str]  # those whose document holds the query's own text

    def describe(self) -> str:
        """One line for the user: what was decided and how to override it."""
        kept = self.shared_ids - len(self.self_queries)
        if not self.shared_ids:
            return (f"{self.name}: no query id is a document id, so no self-hits to drop "
                    "(--drop-self-hits/--keep-self-hits override)")
        if self.self_queries:
            head = (f"{self.name}: {len(self.self_queries)} of {self.queries} queries are documents of the corpus "
                    f"(same id, same text): their self-hits are dropped")
            tail = f"; {kept} other shared ids are kept" if kept else ""
            return f"{head}{tail} (--keep-self-hits keeps them)"
        return (f"{self.name}: {self.shared_ids} query ids are also document ids but those documents hold other "
                "text: hits are kept (--drop-self-hits drops them)")


def decide_self_hits(name: str, queries: Mapping[str, str], corpus: Iterable[Document]) -> SelfHitDecision:
    """Stream ``corpus`` once and find the queries whose same-id document holds the query's text."""
    shared = 0
    matched: set[str] = set()
    for doc in corpus:
        query = queries.get(doc.doc_id)
        if query is None:
            continue
        shared += 1
        if holds_query_text(query, doc):
            matched.add(doc.doc_id)
    return SelfHitDecision(name, len(queries), shared, frozenset(matched))
