"""Every relative link and #anchor in README.md and docs/*.md resolves (GitHub's heading anchors)."""

from __future__ import annotations

from docs_markdown import DOCS, README, broken_links, github_anchor, markdown_files


def test_docs_pages_exist() -> None:
    assert README.exists() and DOCS.is_dir()
    assert len(list(DOCS.glob("*.md"))) >= 10


def test_github_anchor_rule() -> None:
    assert github_anchor("CPU inference: ONNX and int8") == "cpu-inference-onnx-and-int8"
    assert github_anchor("`sbmoe train --recipe paper`") == "sbmoe-train---recipe-paper"
    assert github_anchor("Set-up: two commands") == "set-up-two-commands"


def test_relative_links_and_anchors_resolve() -> None:
    problems = [problem for path in markdown_files() for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)
