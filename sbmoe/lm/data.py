"""Text for the MoE LM testbed: SciFact abstracts split by document (the default corpus) or Tiny Shakespeare
split by position (a small corpus on which the testbed converges within a CPU budget), WikiText-2 as
out-of-domain text.

A byte-level BPE tokenizer is trained locally (``tokenizers``) on the training documents only. Token
streams are int32 tensors; training batches are random windows from the training stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a corpus is tokenized, not when ``CORPORA`` is listed
    import torch
    from torch import Tensor

from ..atomic import atomic_file, corrupt_artifact
from ..data import BeirDataset, DatasetNotFoundError, search_roots


def is_held_out(doc_id: str, fraction: float) -> bool:
    """A stable document-level split: the same ids are held out on every machine and every run."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def scifact_texts(fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(training abstracts, held-out abstracts) of SciFact's corpus, split by document id."""
    train, held_out = [], []
    for doc in BeirDataset.open("scifact").iter_corpus():
        (held_out if is_held_out(doc.doc_id, fraction) else train).append(doc.as_text())
    return train, held_out


def data_file(relative: str) -> Path:
    """The first data root holding ``relative`` (e.g. ``wikitext-2/valid.txt``)."""
    for root in search_roots():
        if (root / relative).is_file():
            return root / relative
    raise DatasetNotFoundError(f"{relative} not found under {', '.join(map(str, search_roots()))}")


def wikitext_text(split: str) -> str:
    """WikiText-2 ``valid`` or ``test`` (tokenized release) from the data roots."""
    return data_file(f"wikitext-2/{split}.txt").read_text(encoding="utf-8")


def tinyshakespeare_texts(fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(training speeches, held-out speeches) of Tiny Shakespeare: the speeches (blank-line separated) in the
    first ``1 - fraction`` of the text train, the rest (the end of the play sequence) is held out, so no
    held-out line sits between training lines."""
    text = data_file("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    cut = len(text) * (1 - fraction)
    train, held_out, position = [], [], 0
    for speech in text.split("\n\n"):
        if speech.strip():
            (train if position < cut else held_out).append(speech.strip("\n"))
        position += len(speech) + 2
    return train, held_out


CORPORA: dict[str, Callable[[], tuple[list[str], list[str]]]] = {
    "scifact": scifact_texts, "tinyshakespeare": tinyshakespeare_texts}
HELD_OUT: dict[str, str] = {"scifact": "held-out SciFact", "tinyshakespeare": "held-out Tiny Shakespeare"}  # labels


def train_tokenizer(texts: list[str], vocab_size: int, path: Path | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` (saved as JSON when ``path`` is given)."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>"])
    if path is not None:
        with atomic_file(path, "wb") as handle:
            handle.write(tokenizer.to_str().encode("utf-8"))
    return tokenizer


def load_tokenizer(path: Path):
    """The run's BPE tokenizer; a damaged file is one line (the tokenizers library raises a bare Exception)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: tokenizer not found") from None
        raise corrupt_artifact(path, "a tokenizers JSON file", exc, "it is the run's vocabulary: restore it, or "
                               "delete the run folder and train again") from None


def encode_stream(tokenizer, texts: list[str]) -> Tensor:
    """One int32 stream of all texts, each followed by the end-of-text token."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eot)
    import torch

    return torch.tensor(ids, dtype=torch.int32)


@dataclass
class LMCorpus:
    train: Tensor
    validation: Tensor
    ood: dict[str, Tensor]
    vocab_size: int

    @classmethod
    def build(cls, vocab_size: int = 4096, tokenizer_path: Path | None = None, corpus: str = "scifact") -> LMCorpus:
        """Streams for training, validation and WikiText-2 from one of ``CORPORA``; the tokenizer is read from
        ``tokenizer_path`` when it exists (so a saved model is evaluated with its own vocabulary), else trained
        (and saved)."""
        if corpus not in CORPORA:
            raise ValueError(f"unknown LM corpus {corpus!r}; choose from {', '.join(CORPORA)}")
        train_texts, val_texts = CORPORA[corpus]()
        if tokenizer_path is not None and Path(tokenizer_path).is_file():
            tokenizer = load_tokenizer(tokenizer_path)
        else:
            tokenizer = train_tokenizer(train_texts, vocab_size, tokenizer_path)
        ood = {f"wikitext2-{s}": encode_stream(tokenizer, [wikitext_text(s)]) for s in ("valid", "test")}
        return cls(encode_stream(tokenizer, train_texts), encode_stream(tokenizer, val_texts), ood,
                   tokenizer.get_vocab_size())

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        import torch

        starts = torch.randint(0, len(self.train) - seq_len - 1, (batch_size,), generator=generator)
        windows = torch.stack([self.train[s:s + seq_len + 1] for s in starts.tolist()]).long()
        return windows[:, :-1], windows[:, 1:]
