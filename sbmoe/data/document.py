"""One corpus document: the record that the BEIR loader yields and the self-hit check reads.

It stands in its own module, below both, so that neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    def as_text(self) -> str:
        """Title and body joined by one space, stripped: BEIR's convention for dense encoders."""
        return (self.title + " " + self.text).strip()
