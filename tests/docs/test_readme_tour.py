"""Every Python block of the README runs, in order, in one namespace, as a reader would paste them.

The tour names ``scifact`` and ``models/minilm-sbmoe`` (what the tour's ``sbmoe train`` writes); here
``$SBMOE_DATA/scifact`` is the 50-document SciFact slice and that folder is all-MiniLM-L6-v2 with an
untrained SB-MoE head, so the blocks run in seconds on the real code paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from docs_markdown import README, split_blocks

pytestmark = pytest.mark.slow  # loads the real all-MiniLM-L6-v2


def tour_blocks() -> list:
    return [block for block in split_blocks(README)[0] if block.lang == "python"]


@pytest.fixture
def tour_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scifact_slice: Path, minilm_dir: str) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer

    from sbmoe.models.pipeline import with_head
    from sbmoe.models.sbmoe_head import SBMoEHead

    data = tmp_path / "data"
    shutil.copytree(scifact_slice, data / "scifact")
    monkeypatch.setenv("SBMOE_DATA", str(data))
    torch.manual_seed(0)
    model = SentenceTransformer(minilm_dir)
    with_head(model, SBMoEHead(model.get_embedding_dimension(), 6)).save(str(tmp_path / "models" / "minilm-sbmoe"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_a_python_tour() -> None:
    blocks = tour_blocks()
    assert len(blocks) >= 2
    assert any("trust_remote_code=True" in block.text for block in blocks)


def test_readme_python_blocks_run(tour_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict = {"__name__": "__readme__"}
    for block in tour_blocks():
        code = compile(block.text, f"README.md:{block.line}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own code, on a tiny corpus
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "(1, 384)" in printed
