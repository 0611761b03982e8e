"""A frozen text -> embedding lookup as a sentence-transformers input module.

Head-only training (``sbmoe train --freeze-encoder``) puts this in place of the encoder: the trainer,
loss, evaluator and checkpoints stay sentence-transformers', but each step costs a table lookup instead
of a transformer forward pass, so training the head on cached base embeddings takes minutes on a CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.sentence_transformer.modules import InputModule
from torch import Tensor, nn


class EmbeddingTable(InputModule):
    """Rows keyed by the text as the model would encode it: the side's prompt, then the text."""

    config_keys: list[str] = []
    save_in_root: bool = False
    TEXTS_FILE = "texts.json"

    def __init__(self, texts: Sequence[str], embeddings: Tensor, prompts: Sequence[str] = ()) -> None:
        super().__init__()
        self.prompts = [p for p in prompts if p]  # tried when a text comes without one (the trainer's model card)
        if len(texts) != embeddings.shape[0]:
            raise ValueError(f"{len(texts)} texts for {embeddings.shape[0]} embeddings")
        self.texts = list(texts)
        self.rows = {text: row for row, text in enumerate(self.texts)}
        self.table = nn.Embedding.from_pretrained(embeddings.float(), freeze=True)

    def row(self, text: str, prompt: str | None) -> int:
        key = (prompt or "") + text
        if key not in self.rows and not prompt:
            key = next((p + text for p in self.prompts if p + text in self.rows), key)
        return self.rows[key]

    def get_embedding_dimension(self) -> int:
        return self.table.embedding_dim

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        try:
            rows = [self.row(text, prompt) for text in inputs]
        except KeyError as exc:
            raise KeyError(f"text not in the embedding table: {str(exc)[:80]}") from None
        # named input_ids so that the trainer, which collects feature columns by that suffix, sees it
        return {"input_ids": torch.tensor(rows, dtype=torch.long), "modality": "text"}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self.table(features["input_ids"].to(self.table.weight.device))
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        with open(os.path.join(output_path, self.TEXTS_FILE), "w", encoding="utf-8") as handle:
            json.dump(self.texts, handle)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> EmbeddingTable:
        folder = os.path.join(model_name_or_path, subfolder)
        with open(os.path.join(folder, cls.TEXTS_FILE), encoding="utf-8") as handle:
            texts = json.load(handle)
        from safetensors.torch import load_file

        weights = load_file(os.path.join(folder, "model.safetensors"))
        return cls(texts, weights["table.weight"])
