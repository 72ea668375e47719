"""The tool documents itself: every command has help, is in the generated reference and is used in
the hand-written pages (README.md and docs/); every config key too; modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from safehold import config, naming
from safehold.cli.main import cli

from .conftest import ROOT
from .docs_support import doc_files, invocations, reference_hook, resolve

CONTEXT = click.Context(cli)
COMMANDS = cli.list_commands(CONTEXT)


def command_named(name: str) -> click.Command:
    command = cli.get_command(CONTEXT, name)
    assert command is not None, name
    return command


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_and_is_documented(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safehold", name, "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: safehold" in result.stdout
    command = command_named(name)
    assert command.help and len(command.help) > 20
    assert f"`safehold {name}` {{#safehold-{name}}}" in reference_hook().commands_page()
    assert (name,) in _named_in_the_pages(), f"no page of docs/ shows how to use safehold {name}"


def test_every_subcommand_is_in_the_reference_and_used_in_the_pages() -> None:
    named = _named_in_the_pages()
    page = reference_hook().commands_page()
    for path, _, _ in reference_hook().command_tree():
        if len(path) > 1:
            assert f"`safehold {' '.join(path)}`" in page
            assert path in named, f"no page of docs/ shows how to use safehold {' '.join(path)}"


def _named_in_the_pages() -> set[tuple[str, ...]]:
    """Every command path a hand-written page of docs/ runs (README.md is the summary)."""
    return {
        resolve(found.words)[0]
        for path in doc_files()
        if path.name != "README.md"
        for found in invocations(path)
    }


def test_every_option_has_help() -> None:
    for command in map(command_named, COMMANDS):
        for param in command.params:
            # A hidden option (an old spelling kept working) is not in --help to explain.
            if isinstance(param, click.Option) and param.name != "help" and not param.hidden:
                assert param.help, f"{command.name} {param.opts} has no help text"


def test_every_config_key_is_documented() -> None:
    """In the generated reference with its environment names, and explained in the guide."""
    reference = reference_hook().config_page()
    pages = "\n".join(p.read_text() for p in doc_files() if p.name != "README.md")
    for key in config.all_keys():
        row = next((line for line in reference.splitlines() if line.startswith(f"| `{key}` |")), "")
        assert all(f"`{env}`" in row for env in config.env_names(key)), key
        assert f"`{key}`" in pages, f"config key {key} is not explained in docs/ (the guide)"


def test_modules_stay_small() -> None:
    big = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "src").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not big, f"split these by what they own: {big}"


def test_no_shell_true_anywhere() -> None:
    offenders = [
        str(p) for p in (ROOT / "src").rglob("*.py") if "shell=True" in Path(p).read_text()
    ]
    assert offenders == []


def test_design_doc_is_the_shared_one_plus_as_built() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    shared = ROOT.parent / "shared" / "DESIGN.md"
    assert "## As built" in design
    if shared.exists():
        for heading in [ln for ln in shared.read_text().splitlines() if ln.startswith("## ")]:
            assert heading in design, f"docs/design.md lost the section {heading!r}"


def test_the_repository_layout_is_formed_in_naming_and_listed_in_the_design() -> None:
    """Every repository folder and key safehold writes is formed in ``naming`` (``LAYOUT``),
    each is in docs/design.md's repository table, every key the table names is in ``LAYOUT``,
    and no other module spells one."""
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## Repository layout", 1)[1].split("```", 2)[1]
    listed = {
        word.rstrip("/,").split("<", 1)[0].rstrip("/")
        for line in table.splitlines()
        for word in line.split()[:2]
        if word.startswith((".safehold", "wal/", "base/", "chunks/"))
    }
    formed = {key.rstrip("-/") for key in naming.LAYOUT}
    assert {key for key in formed if not any(k.startswith(key) for k in listed)} == set()
    assert {key for key in listed if not any(key.startswith(f) for f in formed)} == set()
    spelled = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "src").rglob("*.py")
        if path.name != "naming.py"
        and any(
            f'"{key}' in path.read_text()
            for key in formed
            if key.startswith((naming.META, naming.CHUNKS_DIR))
        )
    }
    assert spelled == set(), f"form repository keys in naming.py only: {spelled}"
