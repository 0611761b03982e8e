"""Every ``sbmoe ...`` line in a fenced bash block of README.md and docs/*.md names a real (sub)command and only
options that command has, checked against the click tree typer builds from sbmoe.cli (nothing is run)."""

from __future__ import annotations

import typer
from docs_markdown import bad_command_lines, check_invocation, markdown_files, sbmoe_invocations

from sbmoe.cli import app

ROOT_COMMAND = typer.main.get_command(app)


def test_checker_catches_a_renamed_flag_and_an_unknown_command() -> None:
    good = sbmoe_invocations("sbmoe eval --model minilm --datasets=scifact && sbmoe bm25 search -i x -q y -o z")
    assert [check_invocation(ROOT_COMMAND, args) for args in good] == [None, None]
    assert "no option --dataset" in check_invocation(ROOT_COMMAND, ["eval", "--dataset", "scifact"])
    assert "no command 'evaluate'" in check_invocation(ROOT_COMMAND, ["evaluate"])
    torchrun = sbmoe_invocations("torchrun --nproc_per_node 2 -m sbmoe.cli train --data t.tsv --bogus 1")
    assert "no option --bogus" in check_invocation(ROOT_COMMAND, torchrun[0])


def test_every_documented_command_line_parses() -> None:
    problems, checked = [], 0
    for path in markdown_files():
        found, count = bad_command_lines(ROOT_COMMAND, path)
        problems += found
        checked += count
    assert checked >= 30, f"only {checked} sbmoe command lines found in the docs' bash blocks"
    assert not problems, "command lines the CLI would reject:\n" + "\n".join(problems)
