"""Every command's ``--help`` ends with two or three examples, and every example parses.

The command tree is walked (not listed here), so a new command without examples fails, and each
example is parsed by click against the real command: a renamed option or a typo fails too.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from safehold.cli.examples import EXAMPLES
from safehold.cli.main import COMMANDS, cli


def _walk(group: click.Group, ctx: click.Context, prefix: str = "") -> Iterator[str]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = f"{prefix}{name}"
        yield path
        if isinstance(command, click.Group):
            yield from _walk(command, ctx, f"{path} ")


def _root() -> click.Context:
    return click.Context(cli, info_name="safehold")


PATHS = sorted(["", *_walk(cli, _root())])  # "": safehold --help itself


def test_the_walk_finds_the_commands_and_subcommands() -> None:
    assert {"backup", "restore", "schedule", "schedule install", "snapshots export"} <= set(PATHS)
    assert set(COMMANDS) <= set(PATHS)


@pytest.mark.parametrize("path", PATHS)
def test_every_command_has_two_or_three_examples(path: str) -> None:
    assert 2 <= len(EXAMPLES.get(path, ())) <= 3, f"'{path}' needs 2-3 examples in examples.py"


def test_no_examples_for_commands_that_do_not_exist() -> None:
    assert not set(EXAMPLES) - set(PATHS)


def _words(line: str) -> list[str]:
    """The words of the safehold command, as a shell splits them, up to a pipe or redirection
    (``safehold cat latest | pg_restore --list``)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    ends = [i for i, word in enumerate(words) if word in {"|", ">", ">>", "<", "&&", ";"}]
    return words[: ends[0]] if ends else words


def _parse(words: list[str]) -> click.Context:
    """Resolve the command path in the click tree and let click parse the rest, as it would."""
    assert words[0] == "safehold"
    ctx, words = _root(), words[1:]
    command: click.Command = cli
    while isinstance(command, click.Group):
        assert words and not words[0].startswith("-"), "an example must run a command"
        sub = command.get_command(ctx, words[0])
        assert sub is not None, f"no command {words[0]!r}"
        if isinstance(sub, click.Group):
            ctx = click.Context(sub, info_name=words[0], parent=ctx)
        else:
            return sub.make_context(words[0], words[1:], parent=ctx, resilient_parsing=False)
        command, words = sub, words[1:]
    raise AssertionError("unreachable")


EXAMPLE_LINES = sorted(
    {(path, line) for path, examples in EXAMPLES.items() for line, _ in examples}
)


@pytest.mark.parametrize(("path", "line"), EXAMPLE_LINES)
def test_every_example_parses(
    path: str,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # wal-push's PATH must exist: the examples run where PostgreSQL runs them, the data folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / "000000010000000000000003").write_bytes(b"")
    words = _words(line)
    assert not path or words[1] == path.split()[0], f"an example of '{path}' runs '{words[1]}'"
    _parse(words)
    # Parsed, and without an old spelling (its deprecation warning) or anything else said.
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", ["", "backup", "schedule install", "snapshots export", "verify"])
def test_help_ends_with_the_examples(path: str) -> None:
    result = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    block = result.output[result.output.rindex("Examples:") :]
    # One line each, not rewrapped into a paragraph, and nothing after the block.
    for line, what in EXAMPLES[path]:
        assert f"\n    # {what}\n    {line}\n" in block + "\n"
    assert block.rstrip().endswith(EXAMPLES[path][-1][0])
