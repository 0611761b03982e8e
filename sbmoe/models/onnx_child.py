"""Building a model's ONNX graphs (fp32, int8) in child processes, written into the cache all or nothing.

Why children: tracing the torch model, ONNX Runtime's fusions and its quantiser each hold copies of the graph.
Inside the job they raised its peak RSS from 0.84 GB to 1.44 GB (fp32) and 1.58 GB (int8) on the main job
(issue 56). Here each step runs in its own process, which returns its memory when it exits, and imports only
what the step needs (all-MiniLM-L6-v2, peak RSS per step: the export ~0.87 GB with torch and transformers but
not sentence-transformers, which alone costs 0.14 GB more; the fusions ~0.84 GB; int8 ~0.41 GB; all three in
one process ~1.3 GB).

Why a temporary folder: the steps write into a temporary sibling of the cache folder and only the parent, after
every step exited with 0, renames each finished graph into place. A step that is killed (out of memory,
Ctrl-C) or fails (a full disk) leaves no graph that a later run would load; the parent removes the temporary
folder and raises one line saying which step failed and why.

The export step loads the Hugging Face model from the folder the job loaded it from and checks that its
weights hash to the job's before tracing them, so the cache never holds another model's graph under this
model's fingerprint.

    python -m sbmoe.models.onnx_child export SOURCE OUT --sample JSON --dtype float32 --digest SHA256
    python -m sbmoe.models.onnx_child fuse PLAIN OUT [--heads N --hidden N]
    python -m sbmoe.models.onnx_child quantize FP32 OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..atomic import guarded_write
from .aliases import ModelLoadError
from .onnx_export import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    export_plain,
    export_sample,
    fuse_for_ort,
    quantize_int8,
    weights_digest,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class OnnxExportError(ModelLoadError):
    """A step that builds a graph failed or was killed; nothing was written. ``reason`` says why, briefly."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def child_command(arguments: list[str]) -> list[str]:
    """The command line of one step (tests replace it with one that fails)."""
    return [sys.executable, "-m", "sbmoe.models.onnx_child", *arguments]


def build_graphs(model: SentenceTransformer, folder: Path, int8: bool) -> None:
    """Write ``folder/onnx/model.onnx`` for ``model``'s Transformer (and with ``int8`` ``model_int8.onnx``, from
    the fp32 graph), one child process per step; a graph already there is kept."""
    hf_model = model[0].auto_model
    source = str(hf_model.name_or_path)
    fp32 = folder / ONNX_FILE
    with guarded_write(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        steps: list[list[str]] = []
        if not fp32.is_file():
            sample = {name: tensor.tolist() for name, tensor in export_sample(model).items()}
            (work / "sample.json").write_text(json.dumps(sample), encoding="utf-8")
            dtype = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
            config = hf_model.config
            steps.append(["export", source, str(work / "plain.onnx"), "--sample", str(work / "sample.json"),
                          "--dtype", dtype, "--digest", weights_digest(hf_model)])
            steps.append(["fuse", str(work / "plain.onnx"), str(work / ONNX_FILE),
                          "--heads", str(getattr(config, "num_attention_heads", None) or 0),
                          "--hidden", str(getattr(config, "hidden_size", None) or 0)])
        if int8:
            steps.append(["quantize", str(fp32 if fp32.is_file() else work / ONNX_FILE), str(work / ONNX_INT8_FILE)])
        for step in steps:
            done = subprocess.run(child_command(step), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode != 0:
                reason = f"its {step[0]} step {failure(done.returncode, done.stderr)}"
                raise OnnxExportError(f"cannot export {source} to ONNX: {reason}; nothing was written (rerun, or "
                                      "choose --backend torch)", reason)
        with guarded_write(folder):
            for name in (ONNX_FILE, ONNX_INT8_FILE):  # fp32 first: an int8 graph never stands without its source
                if (work / name).is_file():
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(work / name, folder / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def failure(returncode: int, stderr: bytes) -> str:
    """How a step ended: the signal that killed it, else the last line it printed (its exception)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return f"failed: {lines[-1][:300] if lines else f'exit status {returncode}'}"


def export_step(source: str, out: Path, sample_file: Path, dtype: str, digest: str) -> None:
    """Trace the Hugging Face model at ``source`` to the unfused graph ``out`` (torch and transformers only)."""
    import torch
    from transformers import AutoModel

    hf_model = AutoModel.from_pretrained(source, dtype=getattr(torch, dtype)).eval()
    if weights_digest(hf_model) != digest:
        sys.exit(f"error: the weights in {source} are not the ones the job loaded (the folder changed, or the model "
                 "loads through code of its own); no graph written")
    sample = {name: torch.tensor(ids) for name, ids in json.loads(sample_file.read_text(encoding="utf-8")).items()}
    export_plain(hf_model, sample, out)


def main(argv: list[str] | None = None) -> None:
    """One step, in this (child) process."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    export = steps.add_parser("export", help="Trace the model to an unfused graph.")
    export.add_argument("source", help="The Hugging Face model folder (or hub id) the job loaded.")
    export.add_argument("out", type=Path)
    export.add_argument("--sample", type=Path, required=True, help="JSON: input name -> token ids to trace with.")
    export.add_argument("--dtype", default="float32")
    export.add_argument("--digest", required=True, help="sha256 of the job's weights (onnx_export.weights_digest).")
    fuse = steps.add_parser("fuse", help="ONNX Runtime's transformer fusions (torch-free).")
    fuse.add_argument("plain", type=Path)
    fuse.add_argument("out", type=Path)
    fuse.add_argument("--heads", type=int, default=0)
    fuse.add_argument("--hidden", type=int, default=0)
    quantize = steps.add_parser("quantize", help="The int8 recipe (torch-free).")
    quantize.add_argument("fp32", type=Path)
    quantize.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.step == "export":
        export_step(args.source, args.out, args.sample, args.dtype, args.digest)
    elif args.step == "fuse":
        fuse_for_ort(args.plain, args.out, SimpleNamespace(num_attention_heads=args.heads, hidden_size=args.hidden))
    else:
        quantize_int8(args.fp32, args.out)


if __name__ == "__main__":
    main()
