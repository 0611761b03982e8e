"""docs/cli.md is what tools/gen_cli_docs.py writes from the current CLI."""

from __future__ import annotations

import importlib.util

from docs_markdown import ROOT


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    generator = load_generator()
    expected = generator.render()
    committed = generator.CLI_MD.read_text(encoding="utf-8") if generator.CLI_MD.exists() else ""
    assert committed == expected, (
        f"docs/cli.md is stale (the CLI changed): run `{generator.REGENERATE}` and commit docs/cli.md")


def test_cli_reference_lists_every_command_and_option() -> None:
    generator = load_generator()
    text = generator.CLI_MD.read_text(encoding="utf-8")
    for path, command in generator.walk(generator.root_command()):
        assert f"## {' '.join(path)}\n" in text
        for param in command.params:
            if param.param_type_name == "option":
                assert f"`{generator.option_names(param)}`" in text, (path, param.opts)
