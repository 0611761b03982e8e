"""The quickstart notebook runs end to end on the shared SciFact and reproduces the reference figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    report = json.loads((tmp_path / "results" / "quickstart" / "eval.json").read_text(encoding="utf-8"))
    ndcg = {r["system"]: r["metrics"]["nDCG@10"] for r in report["records"]}
    assert ndcg["minilm"] == pytest.approx(0.6451, abs=5e-4)  # BEIR's own pipeline on this model
    assert "bm25" in ndcg
    assert (tmp_path / "results" / "quickstart" / "leaderboard.png").stat().st_size > 1000
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert any(out.get("output_type") in ("display_data", "execute_result") and "image/png" in out.get("data", {})
               for out in outputs)
    assert not any(out.get("output_type") == "error" for out in outputs)
