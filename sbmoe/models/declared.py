"""What a sentence-transformers model declares about how it is to be used: its similarity function and its
query/document prompts (``config_sentence_transformers.json``: ``similarity_fn_name``, ``prompts``,
``default_prompt_name``).

sbmoe encodes and scores every model as it declares, as ``encode_query``/``encode_document`` and
``model.similarity`` would: a cosine model without a Normalize layer scored by raw inner products, or an e5-style
model encoded without its "query: " prompt, gives a wrong leaderboard. Overrides (``--similarity``,
``--query-prompt``, ``--document-prompt``) are written onto the model object, so every path that encodes with it
(one process, a multi-process pool, torchrun, ONNX Runtime) sees the same declaration.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")  # sentence-transformers' similarity_fn_name values
TASKS = ("query", "document")


def declared_similarity(model: SentenceTransformer) -> str:
    """The model's ``similarity_fn_name``; sentence-transformers' own default (cosine) where it declares none."""
    return str(model.similarity_fn_name)


def task_prompt(model: SentenceTransformer, task: str | None) -> str:
    """The prompt ``encode_query`` (task "query") or ``encode_document`` (task "document") prepends; "" for none.

    Resolved by sentence-transformers itself: the task's named prompt when the model has one, else its
    ``default_prompt_name``. (sentence-transformers 6 always holds a "query" and a "document" entry, empty when
    not declared, so there ``encode_query`` never falls back to the default prompt; neither does sbmoe.)
    """
    if task is None:
        return model._resolve_prompt(None, None) or ""
    name = task if task in model.prompts else None
    return model._resolve_prompt(None, name) or ""


def declared_prompts(model: SentenceTransformer) -> dict[str, str]:
    """{"query": prompt, "document": prompt} as sbmoe applies them (empty strings for none)."""
    return {task: task_prompt(model, task) for task in TASKS}


def apply_declarations(model: SentenceTransformer, similarity: str | None = None, query_prompt: str | None = None,
                       document_prompt: str | None = None, name: str = "model") -> None:
    """Write explicit overrides onto ``model`` and say so (one log line each; None keeps the declaration)."""
    if similarity is not None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        declared = declared_similarity(model)
        if similarity != declared:
            logger.warning("%s: scored with %s similarity instead of the declared %s", name, similarity, declared)
        model.similarity_fn_name = similarity
    for task, prompt in (("query", query_prompt), ("document", document_prompt)):
        if prompt is not None:
            if prompt != task_prompt(model, task):
                logger.warning("%s: %s prompt %r instead of the declared %r", name, task, prompt,
                               task_prompt(model, task))
            model.prompts[task] = prompt


def copy_declarations(source: SentenceTransformer, target: SentenceTransformer) -> SentenceTransformer:
    """Give ``target`` (a pipeline rebuilt from ``source``'s modules) the same similarity and prompts."""
    target.prompts = dict(source.prompts)
    target.default_prompt_name = source.default_prompt_name
    target.similarity_fn_name = source._similarity_fn_name
    return target
