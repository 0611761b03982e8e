"""The CLI's rule for bad input and faults, as the tests check it: exit 1, one ``error:`` line, no traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from sbmoe.cli import app

runner = CliRunner()


def fails_with_one_line(*args: object) -> str:
    """Run the CLI; it must exit 1 with one ``error:`` line on stderr and no traceback. Returns that line."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
