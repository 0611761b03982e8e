"""Exporting an encoder's Transformer to ONNX, and the int8 recipe that keeps its quality.

Only the Transformer (token ids -> token embeddings) goes into the graph: Pooling, an SB-MoE head and
Normalize run in torch after it (they are under 0.1% of the time), so every sbmoe model, head included,
exports the same way. The file sits at ``onnx/model.onnx`` inside a plain sentence-transformers folder,
where sentence-transformers' own ONNX backend looks for it, with the same inputs and output name.

The exported graph goes through ONNX Runtime's transformer fusions (multi-head Attention, SkipLayerNorm,
BiasGelu as single contrib ops), which the int8 recipe needs: quantising a fused Attention quantises the
query, key and value projections as one integer GEMM.

int8 (``onnx/model_int8.onnx``): dynamic quantisation (activations quantised per tensor at run time) of
every MatMul and Attention with per-channel int8 weights. Measured with all-MiniLM-L6-v2 (64 SciFact
documents, 2 threads, cosine to fp32 mean/min, speed relative to the fp32 graph; the machine was shared,
so speeds are ratios of one run): per-tensor weights on the unfused graph 0.937/0.901; per-channel,
FFN output projections kept fp32 (an earlier recipe) 0.9977/0.9959 at 1.45x; the same on the fused graph
1.53x; per-channel everywhere on the fused graph 0.9946/0.9918 at 2.07x, SciFact nDCG@10 0.6450 vs 0.6451
for fp32 (the recipe). Tried and dropped: u8 weights (0.9949, 1.4x), reduce_range (0.9935), SmoothQuant
on the FFN output inputs (alpha 0.5: 0.9822; 0.75: 0.9940). No calibration data is needed.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path

if TYPE_CHECKING:  # torch loads in the export itself: the fusion and int8 steps of onnx_child run without it
    import torch
    from sentence_transformers import SentenceTransformer

ONNX_FILE = "onnx/model.onnx"
ONNX_INT8_FILE = "onnx/model_int8.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
QUANTIZE_CHOICES = ("int8",)
RECIPE = "fused-int8-all"  # names cached exports: a changed recipe never serves an older file


def transformer_inputs(model: SentenceTransformer) -> tuple[str, ...]:
    """The graph inputs: those of input_ids/attention_mask/token_type_ids the tokenizer produces."""
    sample = model.tokenizer(["a"], return_tensors="pt")
    return tuple(name for name in ONNX_INPUTS if name in sample)


def export_sample(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    """Two padded texts as the graph's inputs: what the exporter traces (values do not matter, names do)."""
    sample = model.tokenizer(["an example", "a slightly longer example text"], padding=True, return_tensors="pt")
    return {name: sample[name] for name in transformer_inputs(model)}


def weights_digest(hf_model: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes, bytes): an export child checks that it loaded the
    weights the job holds before it writes a graph that the job's cache would serve as theirs."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(hf_model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_plain(hf_model: torch.nn.Module, sample: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Trace a Hugging Face model (token ids -> last hidden state) to an unfused graph: the legacy exporter,
    opset 17, eager attention, dynamic batch and length, inputs named as ``sample``'s keys."""
    import torch

    class HiddenStates(torch.nn.Module):
        """The model as a function of positional tensors (what the legacy exporter traces)."""

        def __init__(self) -> None:
            super().__init__()
            self.hf_model = hf_model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.hf_model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    names = tuple(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, OUTPUT_NAME)}
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")  # sdpa's mask helpers do not trace to a length-generic graph
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes, expected here
            torch.onnx.export(HiddenStates().eval(), tuple(sample.values()), str(path), input_names=list(names),
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    finally:
        hf_model.set_attn_implementation(previous)
    return path


def export_transformer(model: SentenceTransformer, path: Path) -> Path:
    """Write ``model``'s Transformer as a fused ONNX graph, in this process (``sbmoe export``; a job builds its
    graphs in child processes, one step each: ``onnx_child``)."""
    hf_model = model[0].auto_model
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as work:
        plain = export_plain(hf_model, export_sample(model), Path(work) / "plain.onnx")
        fuse_for_ort(plain, path, hf_model.config)
    return path


def fuse_for_ort(plain: Path, fused: Path, config: object) -> Path:
    """ONNX Runtime's BERT fusions applied to ``plain``, written to ``fused``; a graph whose config does not
    name its heads and width is copied unfused (the fusions need both)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    with atomic_path(fused) as tmp:
        if heads and hidden:
            optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden,
                           opt_level=1).save_model_to_file(str(tmp))
        else:
            shutil.copyfile(plain, tmp)
    return fused


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Apply the int8 recipe (module docstring) to a fused fp32 graph.

    Every setting is stated, defaults included, because each is part of the recipe: per-channel s8 weights
    (one scale per output column), u8 activations quantised per batch (dynamic quantisation's only choice),
    which is the operand order of the VNNI dot-product instruction that ONNX Runtime's integer GEMMs use where
    the CPU has it (AVX-512 VNNI, AVX-VNNI, AMX; plain AVX2 and AVX-512 elsewhere); ``reduce_range`` off (7-bit
    weights avoid an overflow of AVX2's 16-bit pair sums without VNNI, at a measured cost in cosine: 0.9935);
    only MatMuls with a constant weight are quantised (``MatMulConstBOnly``), never activation x activation.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(int8_path) as tmp:  # contrib ops defeat shape inference: unknown tensors are float
        quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT, "MatMulConstBOnly": True})
    return int8_path


def write_onnx_files(model: SentenceTransformer, folder: Path, quantize: str | None = None) -> Path:
    """Write ``onnx/model.onnx`` (and with ``quantize="int8"`` ``onnx/model_int8.onnx``) into ``folder``."""
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {quantize!r}; choose {', '.join(QUANTIZE_CHOICES)}")
    fp32 = export_transformer(model, Path(folder) / ONNX_FILE)
    return quantize_int8(fp32, Path(folder) / ONNX_INT8_FILE) if quantize == "int8" else fp32
