"""The routed retriever as a sentence-transformers module: ``RoutedTransformer`` takes the place of the encoder's
Transformer. Documents (task "document", or none) pass through the base encoder with every adapter off, so an
index built with the base model serves the routed model unchanged; a query batch first passes through the base to
be routed, then each expert encodes its share of the batch (``average`` and ``gate`` mix the experts' token
embeddings, which mean pooling turns into the same mixture of pooled embeddings). A batch whose queries all go to
one expert (a served query, one at a time) runs through that expert's weights merged into the base Linears, kept
per expert after first use: the expert pass then costs a base pass (all-MiniLM-L6-v2 with LoRA on every Linear:
about 40 MB per expert).

Folder (inside the routed model's sentence-transformers folder)::

    0_RoutedTransformer/transformer/        the base Transformer module, unchanged
    0_RoutedTransformer/experts/<name>/     each expert's adapter files and expert.json
    0_RoutedTransformer/routing.json        mode, expert order, base fingerprint, how the tables were built
    0_RoutedTransformer/routing.safetensors pilots and their owners, domain centroids, gate and classifier weights
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.modules import Transformer
from torch import nn

from .adapters import (
    BASE_ROWS,
    EXPERT_FILE,
    base_weights,
    load_lora,
    lora_layers,
    merged_weights,
    read_expert,
    rows_through,
)
from .config import ROUTING_MODES

ROUTING_FILE = "routing.json"
TABLES_FILE = "routing.safetensors"
TABLES = ("pilots", "pilot_owner", "centroids", "gate_weight", "gate_bias", "classifier_weight", "classifier_bias")


class RoutingTables(nn.Module):
    """Everything a routing mode needs, over unit-length base query embeddings; buffers, so that they are part of
    the model's fingerprint."""

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        super().__init__()
        missing = [name for name in TABLES if name not in tables]
        if missing:
            raise ValueError(f"routing tables lack {missing}")
        for name in TABLES:
            self.register_buffer(name, tables[name].clone())

    def weights(self, routed: torch.Tensor, mode: str, experts: int) -> torch.Tensor:
        """(queries, experts) mixing weights: one-hot for the modes that pick one expert."""
        if mode == "average":
            return torch.full((len(routed), experts), 1.0 / experts)
        if mode == "gate":
            return torch.softmax(routed @ self.gate_weight.T + self.gate_bias, dim=-1)
        if mode == "pilot":
            chosen = self.pilot_owner[(routed @ self.pilots.T).argmax(dim=-1)]
        elif mode == "supervised":
            chosen = (routed @ self.classifier_weight.T + self.classifier_bias).argmax(dim=-1)
        elif mode == "dataset":  # the whole batch (a test set given at once) to the expert of the nearest centroid
            centre = F.normalize(routed.mean(dim=0, keepdim=True), dim=-1)
            chosen = (centre @ self.centroids.T).argmax(dim=-1).expand(len(routed))
        else:
            raise ValueError(f"unknown routing mode {mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        return F.one_hot(chosen.long(), experts).float()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({name: getattr(self, name).contiguous() for name in TABLES}, str(folder / TABLES_FILE))

    @classmethod
    def load(cls, folder: Path) -> RoutingTables:
        from safetensors.torch import load_file

        path = folder / TABLES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; this routed model folder is missing its pilots and routing "
                                    "tables (rebuild it with `sbmoe expert route`)")
        return cls(load_file(str(path)))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class RoutedTransformer(nn.Module):
    """A Transformer whose query pass goes through the expert (or mixture of experts) the routing picks."""

    forward_kwargs = {"task"}  # sentence-transformers hands the encode_query / encode_document task to it
    config_keys = ["mode"]
    save_in_root = False

    def __init__(self, folder: Path, mode: str | None = None) -> None:
        super().__init__()
        folder = Path(folder)
        try:
            info = json.loads((folder / ROUTING_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder / ROUTING_FILE}: not found; not a routed model folder") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{folder / ROUTING_FILE}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        self.info = info
        self.folder = folder
        self.transformer = Transformer.load(str(folder / "transformer"))
        self.expert_names: list[str] = list(info["experts"])
        self.base_fingerprint: str = info["base_fingerprint"]  # the document side: an index of the base serves
        for name in self.expert_names:
            record = read_expert(folder / "experts" / name)
            if record["base_fingerprint"] != self.base_fingerprint:
                raise ValueError(f"{folder / 'experts' / name / EXPERT_FILE}: expert {name!r} was trained on another "
                                 f"base model ({record['base_model']}) than this routed model's")
            if record["kind"] != "lora":
                raise ValueError(f"{folder / 'experts' / name / EXPERT_FILE}: a routed model holds LoRA experts; "
                                 f"{name!r} is a {record['kind']} expert")
            load_lora(self.transformer.auto_model, name, folder / "experts" / name)
        if self.expert_names:
            self.transformer.auto_model.enable_adapters()  # mixed batches pick their adapters row by row
        self._lora = lora_layers(self.transformer.auto_model)
        self.tables = RoutingTables.load(folder)
        self.mode = mode or info["mode"]
        if self.mode not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {self.mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        self.last_choice: torch.Tensor | None = None  # the expert each query of the last batch went to
        self._merged: dict[str, list[nn.Parameter]] = {}  # a plain dict: no state, fingerprint or device of its own

    # what sentence-transformers and sbmoe read off the first module
    @property
    def tokenizer(self) -> Any:
        return self.transformer.tokenizer

    @property
    def max_seq_length(self) -> int | None:
        return self.transformer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self.transformer.max_seq_length = value

    def get_embedding_dimension(self) -> int:
        return self.transformer.get_embedding_dimension()

    def preprocess(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.transformer.preprocess(*args, **kwargs)

    def get_config_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "experts": self.expert_names, "max_seq_length": self.max_seq_length}

    def pass_through(self, features: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """The Transformer's pass with row i through expert ``names[i]`` (``BASE_ROWS``: the base encoder)."""
        with rows_through(self._lora, names):
            return self.transformer(dict(features))

    def base_pass(self, features: dict[str, Any]) -> dict[str, Any]:
        return self.pass_through(features, [BASE_ROWS] * len(features["input_ids"]))

    def merged_pass(self, features: dict[str, Any], name: str) -> dict[str, Any]:
        """Expert ``name``'s pass for the whole batch through its merged weights (the mixed-batch pass adds two
        low-rank products and a scatter per Linear and row group)."""
        if name not in self._merged:
            self._merged[name] = merged_weights(self._lora, name)
        with base_weights(self._lora, self._merged[name]):
            return self.base_pass(features)

    def expert_pass(self, features: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Row i through expert ``names[i]``: one expert's merged weights where the whole batch goes to it and no
        gradient is wanted (the merged copies are constants), else peft's mixed-batch pass."""
        if len(set(names)) == 1 and not torch.is_grad_enabled():
            return self.merged_pass(features, names[0])
        return self.pass_through(features, names)

    def train(self, mode: bool = True) -> RoutedTransformer:
        self._merged.clear()  # weights about to change: merge them again when next used
        return super().train(mode)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> RoutedTransformer:
        self._merged.clear()  # another device or dtype: merge them again there
        return super()._apply(fn, *args, **kwargs)

    def route(self, features: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
        """The base pass and the (queries, experts) weights of the current mode."""
        out = self.base_pass(features)
        routed = F.normalize(masked_mean(out["token_embeddings"], features["attention_mask"]), dim=-1)
        return out, self.tables.weights(routed.float(), self.mode, len(self.expert_names))

    def forward(self, features: dict[str, Any], task: str | None = None, **_: Any) -> dict[str, Any]:
        if task != "query":
            return self.base_pass(features)
        out, weights = self.route(features)
        self.last_choice = weights.argmax(dim=-1)
        if bool(((weights > 0).sum(dim=-1) == 1).all()):  # one expert per query: a single pass
            expert_out = self.expert_pass(features, [self.expert_names[i] for i in self.last_choice.tolist()])
            out["token_embeddings"] = expert_out["token_embeddings"] * weights.max(dim=-1).values[:, None, None] \
                .to(expert_out["token_embeddings"].dtype)
            return out
        tokens = torch.zeros_like(out["token_embeddings"])
        for number, name in enumerate(self.expert_names):
            rows = torch.nonzero(weights[:, number] > 0).flatten()
            if len(rows) == 0:
                continue
            part = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == len(weights) else v
                    for k, v in features.items()}
            expert_tokens = self.expert_pass(part, [name] * len(rows))["token_embeddings"]
            tokens[rows] += weights[rows, number, None, None].to(tokens.dtype) * expert_tokens
        out["token_embeddings"] = tokens
        return out

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Copy the folder this module was read from (the routed model is built, not trained, in memory)."""
        target = Path(output_path)
        if target.resolve() != self.folder.resolve():
            shutil.copytree(self.folder, target, dirs_exist_ok=True)
        info = {**self.info, "mode": self.mode}
        (target / ROUTING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> RoutedTransformer:
        return cls(Path(model_name_or_path) / subfolder)


def routed_module(model: Any) -> RoutedTransformer | None:
    """The routed module of a pipeline, None for any other model."""
    first = model[0] if len(model) else None
    return first if isinstance(first, RoutedTransformer) else None
