"""The ONNX Runtime backend: the pipeline's Transformer replaced by an ORT session, everything after it in torch.

sentence-transformers' own ``backend="onnx"`` needs Optimum, which does not install beside transformers 5,
so sbmoe runs the same file (``onnx/model.onnx`` in the model folder, same inputs and output) itself.
A folder without the file gets one exported into ``$SBMOE_CACHE/onnx/<recipe>/<model fingerprint>/`` on first use,
by a child process (``onnx_child``), so that the export's memory never adds to the job's.
"""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import nn

from ..atomic import corrupt_artifact
from ..data import cache_root
from .bf16 import is_bf16
from .choices import BACKENDS, TORCH_BF16
from .fingerprint import model_fingerprint
from .onnx_child import build_graphs
from .onnx_export import ONNX_FILE, ONNX_INT8_FILE, RECIPE

_FILES = {"onnx": ONNX_FILE, "onnx-int8": ONNX_INT8_FILE}


class OnnxTransformer(nn.Module):
    """Drop-in for sentence-transformers' Transformer module: padded token features -> token embeddings.

    It keeps the tokenizer and ``max_seq_length`` (the pipeline's tokenization is unchanged) and holds no
    torch weights; its config names the graph file's sha256, so the model fingerprint (embedding cache,
    index metadata) tells an fp32 graph, an int8 graph and the torch weights apart. ``text_module``, the
    Transformer it replaced with its weights on the meta device, tokenizes for sentence-transformers' own
    ``encode`` (sbmoe's encoding tokenizes by itself).
    """

    def __init__(self, path: Path, tokenizer: Any, max_seq_length: int | None, dim: int,
                 threads: int | None = None, text_module: nn.Module | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # ORT's default, stated
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":  # the OpenMP knob, for both runtimes
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False  # planned buffers for the largest batch cost ~250 MB of peak RSS
        # the CPU arena stays on: with batches bounded by a token budget it holds one batch's buffers, and
        # without it every op allocates afresh (A/B on 500 SciFact docs, 2 threads: fp32 27.0 -> 28.5 docs/s,
        # int8 49.1 -> 53.6, peak RSS unchanged at ~0.9 GB)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...) share no base
            cached = cache_root() in Path(path).absolute().parents
            rebuild = f"delete {Path(path).parent} (sbmoe's cache) to export it again" if cached else \
                "rerun `sbmoe export` to write the folder again"
            raise corrupt_artifact(path, "a valid ONNX graph", exc, rebuild) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = Path(path)
        with self.path.open("rb") as graph:  # streamed: the graph is never held in memory twice
            self.file_sha256 = hashlib.file_digest(graph, "sha256").hexdigest()
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.dim = dim
        self._text = (text_module,)  # in a tuple: not a submodule, so no state, device or fingerprint of its own

    def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Token features as the replaced Transformer makes them (``SentenceTransformer.encode`` calls this)."""
        text = self._text[0]
        if text is None:
            raise TypeError("this ONNX pipeline has no tokenizing module: encode with sbmoe.models.encoding")
        text.max_seq_length = self.max_seq_length  # set on the pipeline after loading (--max-length)
        return text.preprocess(inputs, prompt=prompt, **kwargs)

    def forward(self, features: dict[str, Any], **_: Any) -> dict[str, Any]:
        feed = {name: features[name].cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        features["token_embeddings"] = torch.from_numpy(self.session.run(None, feed)[0])
        return features

    def get_embedding_dimension(self) -> int:
        return self.dim

    def get_config_dict(self) -> dict[str, Any]:
        return {"onnx_sha256": self.file_sha256, "max_seq_length": self.max_seq_length}


def backend_of(model: SentenceTransformer) -> str:
    """``torch`` (``torch-bf16`` for bfloat16 weights), or the ONNX backend whose session runs the model's
    Transformer."""
    first = model[0]
    if not isinstance(first, OnnxTransformer):
        return TORCH_BF16 if is_bf16(model) else "torch"
    return "onnx-int8" if first.path.name == Path(ONNX_INT8_FILE).name else "onnx"


def graph_of(model: SentenceTransformer) -> Path | None:
    """The ONNX graph file that runs the model's Transformer; None under torch."""
    first = model[0]
    return first.path if isinstance(first, OnnxTransformer) else None


def onnx_file(model: SentenceTransformer, source: str, backend: str) -> Path:
    """The graph for ``backend``: the model folder's own file, else the cache's, built once by a child process."""
    if backend not in _FILES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    own = Path(source) / _FILES[backend]
    if own.is_file():
        return own
    folder = cache_root() / "onnx" / RECIPE / model_fingerprint(model)
    graph = folder / _FILES[backend]
    if not graph.is_file():
        build_graphs(model, folder, int8=backend == "onnx-int8")
    return graph


def use_onnx(model: SentenceTransformer, source: str, backend: str) -> SentenceTransformer:
    """Replace ``model``'s Transformer by an ONNX Runtime session of the same graph (fp32 or int8), in place."""
    if model.device.type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU, not {model.device}")
    first = model[0]
    if not hasattr(first, "auto_model"):
        raise ValueError(f"the {backend} backend needs a Transformer as the first module, not {type(first).__name__}")
    path = onnx_file(model, source, backend)
    tokenizer, max_seq_length, dim = first.tokenizer, first.max_seq_length, first.get_embedding_dimension()
    model[0] = nn.Identity()
    first.auto_model.to("meta")  # the torch weights go before the session loads its own copy (peak memory)
    gc.collect()
    model[0] = OnnxTransformer(path, tokenizer, max_seq_length, dim, text_module=first)
    return model
