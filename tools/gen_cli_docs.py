"""Write docs/cli.md, the command-line reference, from the ``sbmoe`` typer app's click command tree.

    python tools/gen_cli_docs.py            # rewrite docs/cli.md
    python tools/gen_cli_docs.py --check    # exit 1 if docs/cli.md differs from the code

Every command and sub-command gets a section (its help, usage, arguments and options with their help and
defaults), in the order the app declares them. ``tests/docs/test_cli_reference.py`` regenerates the file and
fails when the committed copy is stale, so a new option cannot go undocumented.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
REGENERATE = "python tools/gen_cli_docs.py"

HEADER = f"""# Command-line reference

Generated from the code by `{REGENERATE}`; do not edit by hand (a test fails when this file is stale).
Task-by-task guides: [docs/README.md](README.md).
"""

TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": ""}


def root_command() -> Any:
    """The click command behind ``sbmoe`` (typer builds it from the app)."""
    import typer

    from sbmoe.cli import app

    command = typer.main.get_command(app)
    command.name = "sbmoe"
    return command


def walk(command: Any, path: tuple[str, ...] = ("sbmoe",)) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, command) pair, depth first, groups before their sub-commands."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            found.extend(walk(sub, (*path, name)))
    return found


def one_line(text: str | None) -> str:
    text = " ".join((text or "").replace("\b", " ").split())
    return text.replace("|", "\\|")


def type_name(param: Any) -> str:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:
        return ""
    name = getattr(annotation, "__name__", str(annotation))
    if name == "list":  # list[str]: a repeatable option or a variadic argument
        args = getattr(annotation, "__args__", (str,))
        return TYPE_NAMES.get(args[0].__name__, args[0].__name__.upper()) + " ..."
    return TYPE_NAMES.get(name, name.upper())


def default_text(param: Any) -> str:
    if getattr(param, "required", False):
        return "required"
    default = param.default
    if default is None:
        return ""
    if getattr(param, "is_flag", False) and isinstance(default, bool):
        secondary = getattr(param, "secondary_opts", [])
        if secondary:
            return f"`{param.opts[0] if default else secondary[0]}`"
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return ", ".join(map(str, default))
    return f"`{default}`"


def option_names(param: Any) -> str:
    names = ", ".join(sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
    secondary = getattr(param, "secondary_opts", [])
    if secondary:
        names += " / " + ", ".join(secondary)
    return names


def usage(path: tuple[str, ...], command: Any) -> str:
    parts = [" ".join(path), "[OPTIONS]"]
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.name.upper()
            if getattr(param, "nargs", 1) == -1:
                name += "..."
            parts.append(name if param.required else f"[{name}]")
    if getattr(command, "commands", None):
        parts.append("COMMAND [ARGS]...")
    return " ".join(parts)


def section(path: tuple[str, ...], command: Any) -> str:
    title = " ".join(path)
    lines = [f"## {title}", ""]
    help_text = " ".join((command.help or "").replace("\b", " ").split())
    if help_text:
        lines += [help_text, ""]
    lines += ["```", usage(path, command), "```", ""]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option"]
    if arguments:
        lines += ["| argument | type | help |", "|---|---|---|"]
        lines += [f"| `{p.name.upper()}` | {type_name(p)} | {one_line(getattr(p, 'help', ''))} |" for p in arguments]
        lines.append("")
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for p in options:
            kind = "" if getattr(p, "is_flag", False) else type_name(p)
            lines.append(f"| `{option_names(p)}` | {kind} | {default_text(p)} | {one_line(getattr(p, 'help', ''))} |")
        lines.append("")
    subcommands = getattr(command, "commands", {})
    if subcommands:
        lines += ["| command | what it does |", "|---|---|"]
        for name, sub in subcommands.items():
            anchor = "-".join((*path, name))
            short = sub.short_help or (sub.help or "").split(". ")[0]
            lines.append(f"| [`{title} {name}`](#{anchor}) | {one_line(short)} |")
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The whole reference as markdown."""
    return "\n".join([HEADER] + [section(path, command) for path, command in walk(root_command())]).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if CLI_MD.exists() and CLI_MD.read_text(encoding="utf-8") == text:
            return 0
        print(f"{CLI_MD.relative_to(ROOT)} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1
    CLI_MD.parent.mkdir(parents=True, exist_ok=True)
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
