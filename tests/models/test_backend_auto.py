"""The default backend ``auto``: what it resolves to; that it encodes as torch does, in a graph exported once by
child processes; that a failed export step leaves no graph and says why in one line; and that warm runs of
every ONNX backend read cached embeddings without opening an ONNX Runtime session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbmoe.cli import app
from sbmoe.data import BeirDataset
from sbmoe.models import backend_choice, onnx_child
from sbmoe.models.backend_choice import BACKEND_ENV, NO_TRANSFORMER, resolve_backend
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.onnx_backend import backend_of
from sbmoe.models.onnx_child import OnnxExportError

runner = CliRunner()
CHILD_COMMAND = onnx_child.child_command


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_auto_resolves_from_device_installed_runtime_model_and_environment(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV)
    assert resolve_backend("auto", None).backend == "onnx"  # the CPU, onnxruntime installed (the onnx extra)
    assert resolve_backend("auto", "cpu").backend == "onnx"
    assert resolve_backend("auto", "cuda:1").backend == "torch"
    for chosen in ("torch", "onnx", "onnx-int8"):
        assert resolve_backend(chosen, "cpu").backend == chosen
    routed = tmp_path / "routed"
    routed.mkdir()
    (routed / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                      "type": "sbmoe.experts.routed.RoutedEncoder"}]))
    assert resolve_backend("auto", None, routed) == backend_choice.BackendChoice("torch", NO_TRANSFORMER)
    monkeypatch.setattr(backend_choice, "onnx_available", lambda: False)
    assert resolve_backend("auto", None).backend == "torch"
    assert "onnxruntime is not installed" in resolve_backend("auto", None).reason
    monkeypatch.setenv(BACKEND_ENV, "onnx-int8")
    assert resolve_backend("auto", None).backend == "onnx-int8"
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt' in \$SBMOE_BACKEND"):
        resolve_backend("auto", None)


def refuse_session(*_: object, **__: object):
    raise AssertionError("an ONNX Runtime session was opened although every embedding is cached")


def refuse_export(arguments: list[str]) -> list[str]:
    raise AssertionError(f"a graph was exported again: {arguments}")


def test_auto_encodes_as_torch_exports_once_and_warm_runs_open_no_session(
        tiny_bert_dir: Path, scifact_slice: Path, tmp_path: Path, isolated_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV)
    args = ["eval", "-m", tiny_bert_dir, "-d", scifact_slice, "--metrics", "nDCG@10,R@100"]
    cold = invoke(*args, "--output-dir", tmp_path / "cold")
    assert cold.exit_code == 0, cold.output
    line = f"backend for {tiny_bert_dir}: onnx (auto: ONNX Runtime fp32 on the CPU; --backend torch|onnx|onnx-int8"
    assert sum(line in row for row in cold.output.splitlines()) == 1, cold.output
    recorded = json.loads((tmp_path / "cold" / "eval.json").read_text())["provenance"]["models"][str(tiny_bert_dir)]
    assert recorded["backend"] == "onnx" and recorded["backend_option"] == "auto"
    graphs = sorted((isolated_cache / "onnx").rglob("*.onnx"))
    assert [g.name for g in graphs] == ["model.onnx"]  # exported once, fp32 only, by the child processes
    assert not [p for p in (isolated_cache / "onnx").rglob("*") if ".tmp-" in p.name]  # their work folder is gone

    # the default's embeddings are torch's (max abs difference 1e-5), from that graph
    monkeypatch.setattr(onnx_child, "child_command", refuse_export)
    auto = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    assert backend_of(auto) == "onnx" and auto[0].path == graphs[0]
    texts = [doc.as_text() for doc in BeirDataset.open(str(scifact_slice)).iter_corpus()][:24] + ["", "a query"]
    reference = encode_texts(load_encoder(EncoderConfig(model=str(tiny_bert_dir), backend="torch")), texts)
    assert np.abs(encode_texts(auto, texts) - reference).max() <= 1e-5

    # explicit ONNX backends: the same graph (int8 quantised from it by one more child); then warm
    monkeypatch.setattr(onnx_child, "child_command", CHILD_COMMAND)
    colds = {"auto": cold}
    for backend in ("onnx", "onnx-int8"):
        colds[backend] = invoke(*args, "--backend", backend, "--output-dir", tmp_path / f"cold-{backend}")
        assert colds[backend].exit_code == 0, colds[backend].output
    int8_graph = next((isolated_cache / "onnx").rglob("model_int8.onnx"))
    assert sorted(g.name for g in (isolated_cache / "onnx").rglob("*.onnx")) == ["model.onnx", "model_int8.onnx"]
    assert_per_channel_int8(int8_graph)
    monkeypatch.setattr("onnxruntime.InferenceSession", refuse_session)
    monkeypatch.setattr(onnx_child, "child_command", refuse_export)
    for backend, first in colds.items():
        option = ["--backend", backend] if backend != "auto" else []
        warm = invoke(*args, *option, "--output-dir", tmp_path / f"warm-{backend}")
        assert warm.exit_code == 0, warm.output
        out = f"cold-{backend}" if backend != "auto" else "cold"
        assert warm.output.replace(f"warm-{backend}", "OUT") == first.output.replace(out, "OUT")
        warm_json = json.loads((tmp_path / f"warm-{backend}" / "eval.json").read_text())
        cold_json = json.loads((tmp_path / out / "eval.json").read_text())
        assert [r["metrics"] for r in warm_json["records"]] == [r["metrics"] for r in cold_json["records"]]
        assert warm_json["provenance"]["models"][str(tiny_bert_dir)]["backend"] == (
            "onnx" if backend == "auto" else backend)


def assert_per_channel_int8(path: Path) -> None:
    """Every weight MatMul and Attention of the tiny BERT (2 layers, d = 32) integer, one scale per output column."""
    import onnx

    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QAttention") == 2 and ops.count("MatMulInteger") == 6 and "MatMul" not in ops, ops
    scales = sorted({tuple(i.dims) for i in graph.initializer if i.name.endswith("_scale")})
    assert scales == [(32,), (64,), (96,)], scales  # d (attention out, FFN out), 2d (FFN in), 3d (q, k, v)


FAIL = """
import errno, os, signal, sys
out = sys.argv[2]
with open(out, "wb") as half:  # a graph half written when the step dies
    half.write(b"\\x08\\x07" * 1000)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out)
"""


@pytest.mark.parametrize("fault", ["kill", "disk-full"])
def test_failed_export_step_leaves_no_graph_and_says_why_in_one_line(
        fault: str, tiny_bert_dir: Path, scifact_slice: Path, isolated_cache: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    steps: list[str] = []

    def failing(arguments: list[str]) -> list[str]:
        steps.append(arguments[0])
        return [sys.executable, "-c", FAIL, fault, arguments[2]]  # arguments[2]: the step's output file

    monkeypatch.setattr(onnx_child, "child_command", failing)
    why = "was killed by SIGKILL (out of memory?)" if fault == "kill" else "No space left on device"
    with pytest.raises(OnnxExportError) as raised:
        load_encoder(EncoderConfig(model=str(tiny_bert_dir), backend="onnx"))
    message = str(raised.value)
    assert "\n" not in message and why in message and "its export step" in message, message
    assert steps == ["export"]
    leftovers = list((isolated_cache / "onnx").rglob("*"))
    assert not [p for p in leftovers if p.is_file()], leftovers  # no graph, no half-written file, no work folder
    assert not [p for p in leftovers if ".tmp-" in p.name], leftovers

    result = invoke("eval", "-m", tiny_bert_dir, "-d", scifact_slice, "--backend", "onnx", "--metrics", "nDCG@10")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [row for row in result.output.splitlines() if row.startswith("error:")]
    assert len(errors) == 1 and why in errors[0] and "choose --backend torch" in errors[0], result.output

    # the default goes on in torch and says why, in its one line
    monkeypatch.delenv(BACKEND_ENV)
    capsys.readouterr()
    model = load_encoder(EncoderConfig(model=str(tiny_bert_dir)))
    assert backend_of(model) == "torch"
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and "torch (auto: the ONNX export failed: its export step" in printed[0], printed
    assert not [p for p in (isolated_cache / "onnx").rglob("*") if p.is_file()]
