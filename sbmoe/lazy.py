"""Package attributes resolved on first use (PEP 562), so importing a package costs only what it uses.

``import sbmoe`` must not pay for torch, sentence-transformers or faiss: a package lists its public names
and the submodule each lives in, and ``lazy_exports`` gives it the ``__getattr__`` and ``__dir__`` that
import the submodule when the name is first read (then cache it in the package's namespace).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps a name to its submodule (relative,
    e.g. ``".index.retriever"``)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


def exports_of(modules: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """{submodule: names} -> {name: submodule}, the form ``lazy_exports`` takes."""
    return {name: module for module, names in modules.items() for name in names}
