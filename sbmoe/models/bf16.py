"""The ``torch-bf16`` backend: the Transformer's weights and activations in bfloat16, pooling and everything after
it in float32.

An opt-in precision for CPUs with bf16 instructions (AVX-512 BF16, AMX), where oneDNN multiplies bf16 matrices at
up to twice the fp32 rate; embeddings move by about 1e-4 in cosine (all-MiniLM-L6-v2 on SciFact documents: 5e-5 on
average). eval/encode_roofline.py measures its speed, eval/bench_main_job.py the nDCG@10 it costs. The token
embeddings come back to float32 before pooling, so a mean over hundreds of tokens, the normalization and an SB-MoE
head keep fp32 arithmetic and their own fp32 weights.
"""

from __future__ import annotations

import torch
from sentence_transformers import SentenceTransformer

from ..memory import trim_heap
from .aliases import ModelLoadError
from .choices import TORCH_BF16


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (without it oneDNN emulates bf16, slower than fp32)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def _token_embeddings_to_fp32(_module: torch.nn.Module, _inputs: tuple, output: dict) -> dict:
    output["token_embeddings"] = output["token_embeddings"].float()
    return output


def use_bf16(model: SentenceTransformer) -> SentenceTransformer:
    """Cast ``model``'s first module (the Transformer) to bfloat16 in place; its token embeddings leave it as fp32.

    Raises ModelLoadError on a CPU without bf16 instructions."""
    if model.device.type == "cpu" and not cpu_has_bf16():
        raise ModelLoadError(f"--backend {TORCH_BF16} needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); "
                             "this one has neither: choose torch or onnx")
    first = model[0]
    first.to(torch.bfloat16)
    first.register_forward_hook(_token_embeddings_to_fp32)
    trim_heap()  # the fp32 weights just freed go back to the system, not into the encode's heap
    return model


def is_bf16(model: SentenceTransformer) -> bool:
    """Whether the model's first module holds bfloat16 weights (what ``use_bf16`` made of it)."""
    weight = next(model[0].parameters(), None)
    return weight is not None and weight.dtype == torch.bfloat16
