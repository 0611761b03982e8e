"""Which stored file of a local model folder is damaged.

Asked only after a load has failed, so a good folder pays nothing: the user then reads the file's name and
what it should hold instead of a traceback from transformers, safetensors or tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import CorruptArtifactError, corrupt_artifact

REBUILD = "copy the model folder again, or rerun the `sbmoe train` or `sbmoe export` that wrote it"


def damaged_file(folder: Path) -> CorruptArtifactError | None:
    """The first JSON file (configs, tokenizer) or safetensors file (weights) of ``folder`` and its module
    sub-folders that does not parse, as an error to raise; None when every one parses."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in (*folder.glob("*"), *folder.glob("*/*")) if p.is_file() and p.suffix in
                   (".json", ".safetensors") and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                return corrupt_artifact(path, "a JSON file", exc, REBUILD)
        else:
            error = _safetensors_error(path)
            if error is not None:
                return corrupt_artifact(path, "a safetensors weights file", error, REBUILD)
    return None


def _safetensors_error(path: Path) -> Exception | None:
    """Why ``path`` cannot be read as safetensors (header and every tensor's bytes), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not iterable
                weights.get_slice(name)
    except Exception as exc:  # safetensors raises SafetensorError, a bare Exception subclass
        return exc
    return None
