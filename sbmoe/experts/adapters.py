"""The two kinds of query-side expert and their files.

``lora``: a PEFT LoRA adapter inside the encoder (transformers' adapter integration: ``add_adapter``,
``set_adapter``, ``disable_adapters``), so every expert shares one set of base weights and the document pass is
the base model itself. Saved as ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's names).

``pooled``: a low-rank residual map on the pooled query embedding, ``q + B(A q)`` with ``B`` zero at the start, so
an untrained expert is the base model. It trains on cached base query embeddings in minutes; it cannot change how
the encoder reads a query, which is why the LoRA expert is the main arm.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

BASE_ROWS = "__base__"  # peft's name for "no adapter" in a mixed batch
EXPERT_FILE = "expert.json"  # kind, base model and its fingerprint, similarity, training record
POOLED_FILE = "pooled_adapter.safetensors"


def lora_config(rank: int, alpha: int, dropout: float, targets: tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")


def add_lora(auto_model: nn.Module, name: str, rank: int, alpha: int, dropout: float,
             targets: tuple[str, ...]) -> list[nn.Parameter]:
    """Add LoRA adapter ``name`` to a Hugging Face encoder, make it the active one, and return its parameters
    (the only ones that train: the base weights and other experts stay frozen)."""
    auto_model.add_adapter(lora_config(rank, alpha, dropout, targets), adapter_name=name)
    auto_model.set_adapter(name)
    for param in auto_model.parameters():
        param.requires_grad_(False)
    trainable = [p for n, p in auto_model.named_parameters() if f".{name}." in n and "lora_" in n]
    for param in trainable:
        param.requires_grad_(True)
    return trainable


def lora_layers(auto_model: nn.Module) -> list[nn.Module]:
    """The encoder's LoRA-wrapped layers (peft's ``LoraLayer``), in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in auto_model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def rows_through(layers: Sequence[nn.Module], names: Sequence[str]) -> Iterator[None]:
    """Within the block, row i of every batch passes through adapter ``names[i]`` (``BASE_ROWS``: the base weights
    alone), by peft's mixed-batch LoRA forward. Nothing is switched: ``set_adapter`` and ``disable_adapters`` walk
    every module and reset every adapter weight's ``requires_grad`` on each call, milliseconds per query."""
    names = list(names)

    def inject(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "adapter_names": names}

    handles = [layer.register_forward_pre_hook(inject, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def merged_weights(layers: Sequence[nn.Module], name: str) -> list[nn.Parameter]:
    """Each LoRA layer's base weight plus adapter ``name``'s update (peft's ``get_delta_weight``): a pass through the
    base Linears with these weights is that expert's pass, at the base model's cost (no low-rank products)."""
    with torch.no_grad():
        return [nn.Parameter(layer.base_layer.weight + layer.get_delta_weight(name) if name in layer.lora_A
                             else layer.base_layer.weight, requires_grad=False) for layer in layers]


@contextmanager
def base_weights(layers: Sequence[nn.Module], weights: Sequence[nn.Parameter]) -> Iterator[None]:
    """Within the block, layer i's base Linear multiplies by ``weights[i]``; its own weight is back afterwards,
    whatever happens inside (the document pass must stay the base model's)."""
    originals = [layer.base_layer.weight for layer in layers]
    try:
        for layer, weight in zip(layers, weights, strict=True):
            layer.base_layer.weight = weight
        yield
    finally:
        for layer, weight in zip(layers, originals, strict=True):
            layer.base_layer.weight = weight


def save_lora(auto_model: nn.Module, name: str, folder: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    auto_model.peft_config[name].save_pretrained(str(folder))
    weights = get_peft_model_state_dict(auto_model, adapter_name=name)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / "adapter_model.safetensors"))


def load_lora(auto_model: nn.Module, name: str, folder: Path) -> None:
    """Add the adapter saved in ``folder`` under ``name`` (other adapters are untouched)."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True
    with warnings.catch_warnings():  # several named adapters on one encoder is the design, not a slip
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        auto_model.add_adapter(config, adapter_name=name)
    result = set_peft_model_state_dict(auto_model, load_file(str(folder / "adapter_model.safetensors")),
                                       adapter_name=name)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{folder}: adapter weights {missing[:2]} do not fit the base encoder")


class PooledAdapter(nn.Module):
    """``q + B(A q)`` on a pooled query embedding; ``B`` starts at zero (the untrained adapter is the identity)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled + self.up(self.down(pooled))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / POOLED_FILE))

    @classmethod
    def load(cls, folder: Path) -> PooledAdapter:
        from safetensors.torch import load_file

        weights = load_file(str(folder / POOLED_FILE))
        rank, dim = weights["down.weight"].shape
        adapter = cls(dim, rank)
        adapter.load_state_dict(weights)
        return adapter.eval()


def read_expert(folder: Path) -> dict:
    """An expert folder's ``expert.json``; a missing or damaged one is one line naming the file."""
    path = Path(folder) / EXPERT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {folder} an expert folder from `sbmoe expert train`?") \
            from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    for key in ("kind", "base_fingerprint", "base_model", "datasets"):
        if key not in record:
            raise ValueError(f"{path}: missing field {key!r}")
    return record
