"""``import sbmoe`` and the ``sbmoe`` command start without the heavy libraries; each command loads what it runs.

Checked in fresh interpreters (this test session has long imported torch), so nothing here depends on what
other tests loaded before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "sklearn", "onnxruntime", "pyserini")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_cli_and_every_help_page_import_no_heavy_library() -> None:
    code = f"""
import json, sys
import sbmoe
after_package = sorted(m for m in {HEAVY!r} if m in sys.modules)
import sbmoe.cli
after_cli = sorted(m for m in {HEAVY!r} if m in sys.modules)
import typer.main
from typer.testing import CliRunner

group = typer.main.get_command(sbmoe.cli.app)
runner = CliRunner()

def paths(command, prefix):
    yield prefix
    for name, sub in getattr(command, "commands", {{}}).items():  # a group's sub-commands
        yield from paths(sub, [*prefix, name])

helps = {{}}
for path in paths(group, []):
    result = runner.invoke(sbmoe.cli.app, [*path, "--help"])
    helps[" ".join(path) or "sbmoe"] = [result.exit_code, result.output[:200]]
after_help = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"package": after_package, "cli": after_cli, "help": after_help, "helps": helps}}))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["package"] == [] and report["cli"] == [] and report["help"] == []
    helps = report["helps"]
    expected = {"sbmoe", "index", "search", "eval", "export", "routing", "train", "quantize", "bm25", "bm25 index",
                "bm25 search", "lm", "lm train", "lm eval"}
    assert expected <= set(helps)
    for name, (code_, output) in helps.items():
        assert code_ == 0, f"sbmoe {name} --help exited {code_}: {output}"
        assert "Usage:" in output


def test_console_script_help_exits_zero() -> None:
    done = subprocess.run([sys.executable, "-m", "sbmoe.cli", "--help"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "eval" in done.stdout and "search" in done.stdout


def test_public_names_resolve_on_first_use() -> None:
    import sbmoe

    code = f"""
import sys
from sbmoe import EncoderConfig, EvalConfig, IndexConfig, TrainConfig
configs_only = sorted(m for m in {HEAVY!r} if m in sys.modules)
from sbmoe import Retriever, SBMoEHead, build_index, evaluate, train
import sbmoe
from sbmoe.index.retriever import Retriever as direct
assert Retriever is direct and sbmoe.Retriever is direct
print(",".join(configs_only))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""  # the config dataclasses come without torch
    assert set(sbmoe.__all__) <= set(dir(sbmoe))
    for name in sbmoe.__all__:
        assert getattr(sbmoe, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    import sbmoe

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sbmoe.Nope  # noqa: B018


def test_saved_sbmoe_model_loads_in_a_fresh_sentence_transformers(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A plain ``SentenceTransformer(path, trust_remote_code=True)`` (no sbmoe import first) finds the head."""
    import numpy as np
    import torch

    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_texts
    from sbmoe.models.pipeline import with_head
    from sbmoe.models.sbmoe_head import SBMoEHead

    torch.manual_seed(5)
    model = with_head(load_encoder(EncoderConfig(model=str(tiny_bert_dir))), SBMoEHead(32, num_experts=4))
    model.eval()
    model.save(str(tmp_path / "m"))
    texts = ["a query", "a document about cells"]
    np.save(tmp_path / "ours.npy", encode_texts(model, texts))
    code = """
import sys
import numpy as np
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu", trust_remote_code=True)
print(type(model[2]).__module__ + "." + type(model[2]).__name__)
np.save(sys.argv[2], model.encode(["a query", "a document about cells"]))
"""
    done = run_python(code, str(tmp_path / "m"), str(tmp_path / "theirs.npy"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "sbmoe.models.sbmoe_head.SBMoEHead"
    np.testing.assert_allclose(np.load(tmp_path / "theirs.npy"), np.load(tmp_path / "ours.npy"), atol=1e-6)
