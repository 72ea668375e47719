"""The tool documents itself: every command has help and is in the README; modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from safehold import config, naming
from safehold.cli.main import cli

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
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
    assert f"### `safehold {name}`" in README


def test_every_option_has_help() -> None:
    for command in map(command_named, COMMANDS):
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{command.name} {param.opts} has no help text"


def test_every_config_key_is_documented() -> None:
    for key in config.all_keys():
        assert f"`{key}`" in README, f"config key {key} missing from the README"


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
