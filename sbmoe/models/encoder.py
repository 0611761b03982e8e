"""Loading BERT-family encoders as sentence-transformers pipelines.

Every encoder is a ``SentenceTransformer`` (Transformer -> Pooling -> [SB-MoE head] -> [Normalize]),
so anything sbmoe saves loads in BEIR, MTEB or plain sentence-transformers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .aliases import ModelLoadError, offline_models, resolve_model_name
from .choices import AUTO, BACKENDS, TORCH_BF16
from .model_files import damaged_file

if TYPE_CHECKING:  # torch and sentence-transformers load on the first encoder, not with the config
    from sentence_transformers import SentenceTransformer

POOLING_MODES = ("mean", "cls", "max")


@dataclass
class EncoderConfig:
    """Which encoder to load and how to embed with it. ``None`` keeps the model's own setting."""

    model: str = "minilm"
    pooling: str | None = None
    max_length: int | None = None
    normalize: bool | None = None
    batch_size: int = 64
    device: str | None = None
    backend: str = AUTO  # auto | torch | onnx | onnx-int8 | torch-bf16: auto is ONNX Runtime fp32 on the CPU where
    # it is installed, else torch (models/backend_choice.py); pass "torch" for a model to train, save or export
    similarity: str | None = None  # cosine | dot | euclidean | manhattan (None: the model's similarity_fn_name)
    query_prompt: str | None = None  # None: the model's declared "query" prompt
    document_prompt: str | None = None  # None: the model's declared "document" prompt


def needs_sbmoe_code(path: str) -> bool:
    """True when a local model's modules.json names sbmoe's own modules (an SB-MoE head).

    sentence-transformers >= 6 imports module classes outside its own namespace only with
    ``trust_remote_code=True``. For these folders the code in question is the installed sbmoe package that
    is loading them, so sbmoe passes the flag; any other third-party class still needs the user's consent.
    """
    modules_file = Path(path) / "modules.json"
    if not modules_file.is_file():
        return False
    types = [entry.get("type", "") for entry in json.loads(modules_file.read_text(encoding="utf-8"))]
    for router_config in Path(path).glob("*/router_config.json"):  # a Router names its sub-modules' classes
        types += list(json.loads(router_config.read_text(encoding="utf-8")).get("types", {}).values())
    custom = [t for t in types if not t.startswith("sentence_transformers.")]
    return bool(custom) and all(t.startswith("sbmoe.") for t in custom)


def load_encoder(config: EncoderConfig) -> SentenceTransformer:
    """Load ``config.model`` (alias, hub id, or local path) and apply explicit overrides.

    A sentence-transformers directory keeps its own pooling, normalization, similarity and prompts unless the
    config says otherwise; a plain Hugging Face encoder gets mean pooling, no normalization and
    sentence-transformers' default similarity (cosine).
    """
    if config.pooling is not None and config.pooling not in POOLING_MODES:
        raise ModelLoadError(f"unknown pooling {config.pooling!r}; choose one of {', '.join(POOLING_MODES)}")
    if config.backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    from .backend_choice import NO_TRANSFORMER, BackendChoice, announce, resolve_backend

    target = resolve_model_name(config.model)
    is_local = Path(target).exists()
    try:
        choice = resolve_backend(config.backend, config.device, Path(target) if is_local else None)
    except ValueError as exc:  # an unknown name in $SBMOE_BACKEND
        raise ModelLoadError(str(exc)) from None
    from sentence_transformers import SentenceTransformer

    from .declared import SIMILARITIES, apply_declarations
    from .onnx_backend import use_onnx
    from .onnx_child import OnnxExportError
    from .pipeline import replace_pooling, set_normalize

    if config.similarity is not None and config.similarity not in SIMILARITIES:
        raise ModelLoadError(f"unknown similarity {config.similarity!r}; choose one of {', '.join(SIMILARITIES)}")

    try:
        if is_local and not (Path(target) / "modules.json").is_file():
            model = _plain_hf_encoder(target, config)
        else:
            model = SentenceTransformer(target, device=config.device or "cpu",
                                        trust_remote_code=is_local and needs_sbmoe_code(target))
    except Exception as exc:
        damaged = damaged_file(Path(target)) if is_local else None
        if damaged is not None:  # a stored file that does not parse: name it, whatever the library raised
            raise damaged from None
        if not isinstance(exc, (OSError, ValueError)):
            raise
        offline = ", ".join(offline_models()) or "none"
        raise ModelLoadError(
            f"cannot load model {config.model!r} ({target}): {str(exc).splitlines()[0]} "
            f"Available offline: {offline}, or any local model directory."
        ) from exc
    if choice.backend == TORCH_BF16:
        from .bf16 import use_bf16

        use_bf16(model)
    elif choice.backend != "torch":
        if config.backend == AUTO and not hasattr(model[0], "auto_model"):  # a hub model of another kind
            choice = BackendChoice("torch", NO_TRANSFORMER)
        else:
            try:
                use_onnx(model, target, choice.backend)
            except OnnxExportError as exc:  # chosen: one line; auto: the job goes on in torch and says why
                if config.backend != AUTO:
                    raise
                choice = BackendChoice("torch", f"the ONNX export failed: {exc.reason}")
    if config.backend == AUTO:
        announce(config.model, choice)
    if config.pooling is not None:
        replace_pooling(model, config.pooling)
    if config.normalize is not None:
        set_normalize(model, config.normalize)
    if config.max_length is not None:
        model.max_seq_length = config.max_length
    apply_declarations(model, config.similarity, config.query_prompt, config.document_prompt, config.model)
    model.eval()
    return model


def _plain_hf_encoder(path: str, config: EncoderConfig) -> SentenceTransformer:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(path, max_seq_length=config.max_length)
    dim = transformer.get_embedding_dimension()
    modules: list[torch.nn.Module] = [transformer, Pooling(dim, pooling_mode=config.pooling or "mean")]
    if config.normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device=config.device or "cpu")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (benchmarks compare at equal thread counts)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
