"""Names the command line offers as choices (encoder backends, SB-MoE gates and inference modes).

They live in this torch-free module so that ``sbmoe --help`` and option parsing start without importing
torch or sentence-transformers; ``sbmoe_head`` and ``onnx_backend`` use (and re-export) them from here.
"""

from __future__ import annotations

AUTO = "auto"  # the backend chosen for the machine (models/backend_choice.py)
TORCH_BF16 = "torch-bf16"  # opt-in: torch with bfloat16 weights and activations (a CPU with bf16 instructions)
BACKENDS = (AUTO, "torch", "onnx", "onnx-int8", TORCH_BF16)  # what runs the encoder: torch, or ONNX Runtime on the CPU

INFERENCE_MODES = ("top1", "all", "random")
MOE_CHOICES = ("none", *INFERENCE_MODES)  # ``sbmoe train --moe``: no head, or the head's inference mode
# gate formulation -> (router mode in training, router mode for top-1 inference, weight outside normalize?)
GATES: dict[str, tuple[str, str, bool]] = {
    "paper": ("top1", "top1", False),
    "scaled": ("top1", "top1", True),
    "dense": ("all", "top1", True),
    "straight_through": ("straight_through", "straight_through", True),
    "gumbel": ("gumbel", "straight_through", True),
}
TRAINABLE_GATES = tuple(g for g in GATES if g != "paper")
