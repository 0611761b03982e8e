"""``sbmoe quantize``: post-training quantisation of a saved model folder, written back in the same form.

MODEL is an SB-MoE (or any) sentence-transformers folder, or an LM folder from ``sbmoe lm train``. The
output folder loads exactly as its input did (``sbmoe eval --model OUT``, ``sbmoe lm eval OUT``): its weights
are the fake-quant values. Beside them, ``packed.pt`` holds every quantised block in the packed int4/int8
format of ``sbmoe.kernels.quant`` and ``quantization.json`` the widths; ``load_quantized`` rebuilds the model
running on the packed weights (dequant matmuls). It stands with ``export`` among the model-folder writers, above
lm and moe: the library in ``sbmoe.moe.quant`` imports none of data, models or lm.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_dir, read_checkpoint, write_json
from ..data import BeirDataset
from ..lm.data import LMCorpus
from ..lm.train import CHECKPOINT, TOKENIZER, load_trained
from ..moe.quant import (
    QuantConfig,
    QuantTarget,
    average_bits,
    calibrate_lm,
    calibrate_sbmoe,
    install_packed,
    lm_target,
    pack,
    packed_state,
    quantize_target,
    sbmoe_target,
)
from ..moe.quant.allocation import Allocation
from ..moe.quant.rtn import GroupQuant
from .encoder import EncoderConfig, load_encoder

PACKED, REPORT = "packed.pt", "quantization.json"


def model_kind(path: Path) -> str:
    """``lm`` (checkpoint.pt) or ``sentence-transformers`` (modules.json)."""
    if (path / CHECKPOINT).is_file():
        return "lm"
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    raise FileNotFoundError(f"{path}: neither an LM folder ({CHECKPOINT}) nor a sentence-transformers folder "
                            "(modules.json)")


def needs_calibration(config: QuantConfig) -> bool:
    return config.quantizer == "gptq" or config.method == "mxmoe"


def calibration_texts(config: QuantConfig) -> list[str]:
    """A seeded sample of ``calib_texts`` documents from the first 8x that many of ``calib_data``."""
    docs = [d.as_text() for d in islice(BeirDataset.open(config.calib_data).iter_corpus(), 8 * config.calib_texts)]
    return random.Random(config.seed).sample(docs, min(config.calib_texts, len(docs)))


def write_quantized(folder: Path, target: QuantTarget, quantized: dict[str, GroupQuant],
                    allocation: Allocation | None, config: QuantConfig, source: Path) -> dict[str, Any]:
    """packed.pt and quantization.json; returns the report."""
    torch.save({name: packed_state(pack(q), q.bits) for name, q in quantized.items()}, folder / PACKED)
    bits = {name: q.bits for name, q in quantized.items()}
    report = {"source": str(source), "config": asdict(config), "blocks": len(bits),
              "quantized_parameters": sum(b.params for b in target.blocks),
              "average_bits": average_bits(target.blocks, bits), "bits": bits,
              "calibration_tokens": target.tokens}
    if allocation is not None:
        report["mxmoe"] = {"weight": allocation.weight, "objective_accuracy": allocation.accuracy,
                           "objective_cost": allocation.cost}
    write_json(folder / REPORT, report)
    return report


def quantize_lm_folder(path: Path, output: Path, config: QuantConfig, overwrite: bool) -> dict[str, Any]:
    trained = load_trained(path)
    model = trained.model
    target = lm_target(model, config.attention)
    if needs_calibration(config):
        if not (path / TOKENIZER).is_file():
            raise FileNotFoundError(f"{path / TOKENIZER}: needed to draw calibration text for {config.method}")
        corpus = LMCorpus.build(tokenizer_path=path / TOKENIZER, corpus=trained.corpus)
        calibrate_lm(model, target, corpus.train, config.calib_tokens, config.seed)
    quantized, allocation = quantize_target(target, config)
    with atomic_dir(output, overwrite) as tmp:
        torch.save({"model": model.state_dict(), "config": trained.config, "history": trained.history,
                    "step": trained.step}, tmp / CHECKPOINT)
        if (path / TOKENIZER).is_file():
            shutil.copy(path / TOKENIZER, tmp / TOKENIZER)
        return write_quantized(tmp, target, quantized, allocation, config, path)


def quantize_sentence_transformer(path: Path, output: Path, config: QuantConfig, overwrite: bool) -> dict[str, Any]:
    model = load_encoder(EncoderConfig(model=str(path), backend="torch"))  # quantised in place: torch weights
    target = sbmoe_target(model)
    if needs_calibration(config):
        calibrate_sbmoe(model, target, calibration_texts(config))
    quantized, allocation = quantize_target(target, config)
    with atomic_dir(output, overwrite) as tmp:
        model.save(str(tmp))
        return write_quantized(tmp, target, quantized, allocation, config, path)


def quantize_model(model: str | Path, output: Path, config: QuantConfig | None = None,
                   overwrite: bool = False) -> dict[str, Any]:
    """Quantise the model folder ``model`` into ``output`` (see the module doc); returns the report."""
    path, config = Path(model), config or QuantConfig()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    if model_kind(path) == "lm":
        return quantize_lm_folder(path, Path(output), config, overwrite)
    return quantize_sentence_transformer(path, Path(output), config, overwrite)


def load_quantized(folder: str | Path, packed: bool = True) -> nn.Module:
    """A folder written by ``quantize_model``: with ``packed``, running on its packed weights (LM: attention
    and experts; sentence-transformers: encoder linears; SB-MoE head experts keep their fake-quant values)."""
    folder = Path(folder)
    model = load_trained(folder).model if model_kind(folder) == "lm" else \
        load_encoder(EncoderConfig(model=str(folder), backend="torch"))  # the quantised torch modules themselves
    if packed:
        install_packed(model, read_checkpoint(folder / PACKED, "packed quantised weights",
                                              "rerun `sbmoe quantize` into this folder"))
    model.eval()
    return model
