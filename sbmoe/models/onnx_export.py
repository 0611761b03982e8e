"""Exporting an encoder's Transformer to ONNX, and the int8 recipe that keeps its quality.

Only the Transformer (token ids -> token embeddings) goes into the graph: Pooling, an SB-MoE head and
Normalize run in torch after it (they are under 0.1% of the time), so every sbmoe model, head included,
exports the same way. The file sits at ``onnx/model.onnx`` inside a plain sentence-transformers folder,
where sentence-transformers' own ONNX backend looks for it, with the same inputs and output name.

int8 (``onnx/model_int8.onnx``): dynamic quantisation (ORT quantises activations per tensor at run time)
with per-channel int8 weights on every MatMul whose weights are constant, except the FFN output
projections (the MatMuls that contract the wide intermediate dimension), which stay float32. Measured on
300 SciFact documents with all-MiniLM-L6-v2 (cosine to fp32, mean/min): every MatMul per-tensor 0.937/0.901;
per-channel 0.995/0.992; per-channel without the FFN outputs 0.9978/0.9960 (the recipe). No calibration
data is needed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from torch import nn

ONNX_FILE = "onnx/model.onnx"
ONNX_INT8_FILE = "onnx/model_int8.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
QUANTIZE_CHOICES = ("int8",)


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A temporary sibling path renamed to ``final`` on success (the exporters write to paths, not handles)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


class _HiddenStates(nn.Module):
    """The Hugging Face model as a function of positional tensors (what the legacy exporter traces)."""

    def __init__(self, hf_model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.hf_model(**dict(zip(self.input_names, tensors, strict=True))).last_hidden_state


def transformer_inputs(model: SentenceTransformer) -> tuple[str, ...]:
    """The graph inputs: those of input_ids/attention_mask/token_type_ids the tokenizer produces."""
    sample = model.tokenizer(["a"], return_tensors="pt")
    return tuple(name for name in ONNX_INPUTS if name in sample)


def export_transformer(model: SentenceTransformer, path: Path) -> Path:
    """Write ``model``'s Transformer as an ONNX graph (opset 17, eager attention, dynamic batch and length)."""
    hf_model = model[0].auto_model
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")  # sdpa's mask helpers do not trace to a length-generic graph
    names = transformer_inputs(model)
    sample = model.tokenizer(["an example", "a slightly longer example text"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, OUTPUT_NAME)}
    try:
        with _atomic_path(path) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes, expected here
            torch.onnx.export(_HiddenStates(hf_model, names).eval(), tuple(sample[n] for n in names), str(tmp),
                              input_names=list(names), output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    finally:
        hf_model.set_attn_implementation(previous)
    return path


def ffn_output_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes whose constant weight contracts a wider input than it outputs (BERT's FFN output).

    Their inputs follow GELU and carry the widest-ranging activations; quantising them per tensor costs
    the most quality, so the int8 recipe keeps them float32.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    shapes = {init.name: tuple(numpy_helper.to_array(init).shape) for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul"
            and len(shapes.get(node.input[1], ())) == 2 and shapes[node.input[1]][0] > shapes[node.input[1]][1]]


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Apply the int8 recipe (module docstring) to an fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _atomic_path(int8_path) as tmp:
        quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=ffn_output_matmuls(fp32_path))
    return int8_path


def write_onnx_files(model: SentenceTransformer, folder: Path, quantize: str | None = None) -> Path:
    """Write ``onnx/model.onnx`` (and with ``quantize="int8"`` ``onnx/model_int8.onnx``) into ``folder``."""
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {quantize!r}; choose {', '.join(QUANTIZE_CHOICES)}")
    fp32 = export_transformer(model, Path(folder) / ONNX_FILE)
    return quantize_int8(fp32, Path(folder) / ONNX_INT8_FILE) if quantize == "int8" else fp32
