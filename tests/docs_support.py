"""What the documentation names: the ``safehold ...`` command lines in README.md and docs/, read
conservatively (a line or inline code span whose command word is ``safehold``), checked against
the real click tree; and the reference generator (docs/hooks/reference.py), loaded by path."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import click

from .conftest import ROOT

DOCS = ROOT / "docs"
HOOK = DOCS / "hooks" / "reference.py"
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
# Where a command starts: shell operators and grouping split a line into simple commands.
OPERATORS = re.compile(r"&&|\|\||\$\(|[|;(){}]")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CRON_FIELD = re.compile(r"^([\d*/,-]+|@\w+)$")
PREFIXES = {"$", "sudo", "exec", "env", "time", "nohup", "command"}
PLACEHOLDER = re.compile(r"^(<.*>|[A-Z][A-Z0-9_|.-]*)$")


@dataclass(frozen=True)
class Invocation:
    file: Path
    line: int
    words: tuple[str, ...]  # what follows ``safehold``

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every hand-written page (the reference pages are generated at build)."""
    pages = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)
    return [ROOT / "README.md", *pages]


def invocations(path: Path, text: str | None = None) -> list[Invocation]:
    lines = (path.read_text() if text is None else text).splitlines()
    found: list[Invocation] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            if not pending:
                start = number
            pending += line
            if pending.endswith("\\"):  # a continued shell line
                pending = pending[:-1] + " "
                continue
            found += [Invocation(path, start, w) for w in _commands(pending)]
            pending = ""
        else:
            for span in INLINE.finditer(line):
                code = span.group(2).replace("\\|", "|")
                found += [Invocation(path, number, w) for w in _commands(code)]
    return found


def _commands(text: str) -> Iterator[tuple[str, ...]]:
    for segment in OPERATORS.split(text):
        try:
            tokens = shlex.split(segment, comments=True)
        except ValueError:  # an unbalanced quote in prose: plain words will do
            tokens = segment.split()
        words = _after_safehold(tokens)
        if words is not None:
            yield tuple(words)


def _after_safehold(tokens: list[str]) -> list[str] | None:
    """The words after ``safehold`` when this simple command runs safehold, else None."""
    i = 0
    cron = 0
    while i < len(tokens) and cron < 5 and CRON_FIELD.match(tokens[i]):
        i, cron = i + 1, cron + 1
    if 0 < cron < 5:
        return None  # numbers, not a crontab line
    while i < len(tokens) and (tokens[i] in PREFIXES or ASSIGNMENT.match(tokens[i])):
        i += 1 + (tokens[i] == "sudo" and i + 1 < len(tokens) and tokens[i + 1] == "-u") * 2
    if i + 2 < len(tokens) and Path(tokens[i]).name.startswith("python") and tokens[i + 1] == "-m":
        i += 2
    if i < len(tokens) and Path(tokens[i]).name == "safehold":
        return tokens[i + 1 :]
    return None


@cache
def _tree() -> dict[tuple[str, ...], click.Command]:
    hook = reference_hook()
    return {path: command for path, command, _ in hook.command_tree()}


def command_paths() -> set[tuple[str, ...]]:
    return {path for path in _tree() if path}


def resolve(words: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The command path the words name, and what is wrong with them (an unknown command,
    subcommand or option). Placeholders (``COMMAND``, ``<name>``) end the check."""
    tree = _tree()
    path: tuple[str, ...] = ()
    rest = list(words)
    while rest and isinstance(tree[path], click.Group) and not rest[0].startswith("-"):
        word = rest.pop(0)
        if PLACEHOLDER.match(word):
            return path, []
        if (*path, word) not in tree:
            return path, [f"'{' '.join(('safehold', *path, word))}' is not a command"]
        path = (*path, word)
    command = tree[path]
    known = {"-h", "--help"} | ({"--version"} if not path else set())
    for param in command.params:
        if isinstance(param, click.Option):
            known.update(param.opts, param.secondary_opts)
    problems = []
    for word in rest:
        for piece in word.strip("[](),.").split("/"):
            option = piece.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z]", option) and option not in known:
                shown = " ".join(("safehold", *path))
                problems.append(f"'{shown}' has no option {option}")
    return path, problems


@cache
def reference_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("safehold_docs_reference", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
