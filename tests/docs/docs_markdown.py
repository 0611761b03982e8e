"""Reading README.md and docs/*.md for the docs tests: fenced blocks, links, GitHub heading anchors, and the
``sbmoe`` command lines of bash blocks checked against the real click command tree (nothing is run)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SHELL_LANGS = {"bash", "sh", "shell", "console"}

FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str


def split_blocks(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """Fenced code blocks, and the prose lines (number, text) outside them."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    fence: str | None = None
    start, lang, body = 0, "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, start, lang, body = match.group(2), number, match.group(3).lower(), []
            else:
                prose.append((number, line))
        elif match and match.group(2).startswith(fence) and not match.group(3):
            blocks.append(Block(path, start, lang, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    return blocks, prose


def github_anchor(heading: str) -> str:
    """GitHub's heading id: markdown stripped, lowercase, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").lower().strip()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in split_blocks(path)[1]:
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link and image outside code blocks and code spans."""
    found = []
    for number, line in split_blocks(path)[1]:
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links whose file, or whose #anchor in a markdown file, does not exist."""
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where} (no heading with anchor #{anchor} in {linked.relative_to(ROOT)})")
    return problems


# ---- sbmoe command lines --------------------------------------------------------------------------------

def command_lines(block: Block) -> list[tuple[int, str]]:
    """(line, text) of each logical line of a shell block, continuations joined, prompts stripped."""
    lines: list[tuple[int, str]] = []
    pending, first = "", 0
    for offset, raw in enumerate(block.text.splitlines(), 1):
        line = raw.rstrip()
        if not pending:
            first = block.line + offset
            line = re.sub(r"^\s*\$\s+", "", line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((first, pending + line))
        pending = ""
    if pending:
        lines.append((first, pending))
    return lines


def sbmoe_invocations(line: str) -> list[list[str]]:
    """The argument lists after ``sbmoe`` (or ``-m sbmoe.cli``) in each command of a shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|()"):
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for tokens in commands:
        for i, token in enumerate(tokens):
            if token == "sbmoe" or (token == "sbmoe.cli" and i > 0 and tokens[i - 1] == "-m"):
                found.append(tokens[i + 1:])
                break
    return found


def check_invocation(root: Any, args: list[str]) -> str | None:
    """None if the (sub)command exists and each option it names exists for it, else what is wrong."""
    command, path = root, ["sbmoe"]
    i = 0
    while True:
        options = option_names(command)
        while i < len(args) and args[i].startswith("-"):
            if args[i].split("=")[0] not in options:
                return f"{' '.join(path)} has no option {args[i]}"
            i += 1
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            break
        if i >= len(args):
            return None if path == ["sbmoe"] else f"{' '.join(path)} needs a command"
        if args[i] not in subcommands:
            return f"{' '.join(path)} has no command {args[i]!r} (it has {', '.join(subcommands)})"
        command = subcommands[args[i]]
        path.append(args[i])
        i += 1
    options = option_names(command)
    for arg in args[i:]:
        if re.match(r"^-[-A-Za-z]", arg) and arg.split("=")[0] not in options:
            return f"{' '.join(path)} has no option {arg}"
    return None


def option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(getattr(param, "secondary_opts", []))
    return names


def bad_command_lines(root: Any, path: Path) -> tuple[list[str], int]:
    """Problems in every ``sbmoe`` command line of the file's shell blocks, and how many lines were checked."""
    problems, checked = [], 0
    for block in split_blocks(path)[0]:
        if block.lang not in SHELL_LANGS:
            continue
        for number, line in command_lines(block):
            for args in sbmoe_invocations(line):
                checked += 1
                problem = check_invocation(root, args)
                if problem:
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {problem}\n    {line.strip()}")
    return problems, checked
