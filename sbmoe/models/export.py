"""``sbmoe export``: a model saved as a sentence-transformers folder with its ONNX graph(s) inside."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_dir
from .encoder import EncoderConfig, load_encoder

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    """Arguments of ``sbmoe export``: the model to export and where the sentence-transformers folder goes."""

    model: str
    output: Path
    format: str = "onnx"
    quantize: str | None = None
    overwrite: bool = False


def export_model(config: ExportConfig) -> Path:
    """``sbmoe export``: save the model as a sentence-transformers folder with its ONNX graph(s) inside.

    The folder still loads with the torch backend (and in plain sentence-transformers); ``--backend onnx``
    (or ``onnx-int8``) then uses the graph in it instead of exporting on the fly.
    """
    from .onnx_export import QUANTIZE_CHOICES, write_onnx_files

    if config.format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {config.format!r}; choose {', '.join(EXPORT_FORMATS)}")
    if config.quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {config.quantize!r}; choose {', '.join(QUANTIZE_CHOICES)}")
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    model = load_encoder(EncoderConfig(model=config.model, backend="torch"))  # saved and exported: torch weights
    with atomic_dir(output, overwrite=config.overwrite) as tmp:
        model.save(str(tmp))
        write_onnx_files(model, tmp, config.quantize)
    logger.info("exported %s -> %s", config.model, output)
    return output
