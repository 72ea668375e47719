"""``safehold completion SHELL`` loaded into the real bash, zsh and fish, installed the way its
``--help`` says, asked for completions as a user's TAB would."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehold.cli.main import COMMANDS

# The scripts call `safehold` back on every TAB: the one installed beside this interpreter.
BIN = Path(sys.executable).parent
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
STARTING_BA = [name for name in sorted(COMMANDS) if name.startswith("ba")]
assert "backup" in STARTING_BA


def script(shell: str) -> str:
    result = subprocess.run(
        [BIN / "safehold", "completion", shell], capture_output=True, text=True, check=False
    )
    assert result.stderr == ""
    return result.stdout


def shell_env(home: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def bash_complete(tmp_path: Path, words: list[str]) -> list[str]:
    (tmp_path / "safehold.bash").write_text(script("bash"))
    program = f"""
        source {tmp_path / "safehold.bash"}
        complete -p safehold
        COMP_WORDS=({" ".join(f"'{w}'" for w in words)}); COMP_CWORD={len(words) - 1}
        COMPREPLY=()
        _safehold_completion safehold
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env=shell_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    registered, *offered = result.stdout.splitlines()
    assert registered == "complete -o nosort -F _safehold_completion safehold", result.stderr
    return offered


def test_bash_offers_every_command_then_the_options_of_one(tmp_path: Path) -> None:
    assert bash_complete(tmp_path, ["safehold", ""]) == sorted(COMMANDS)
    assert bash_complete(tmp_path, ["safehold", "ba"]) == STARTING_BA
    offered = bash_complete(tmp_path, ["safehold", "backup", "--vo"])
    assert "--volume" in offered
    assert all(word.startswith("--vo") for word in offered)
    assert bash_complete(tmp_path, ["safehold", "completion", ""]) == ["bash", "zsh", "fish"]


def test_fish_loads_the_script_from_its_completions_folder(tmp_path: Path) -> None:
    # Where the --help puts it: fish loads it the first time `safehold` is completed.
    folder = tmp_path / ".config" / "fish" / "completions"
    folder.mkdir(parents=True)
    (folder / "safehold.fish").write_text(script("fish"))

    def complete(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "-c", f"complete -C '{line}'"],
            env={**shell_env(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")},
            capture_output=True,
            text=True,
            check=False,
        )
        return [row.split("\t")[0] for row in result.stdout.splitlines()]

    assert complete("safehold ba") == STARTING_BA
    offered = complete("safehold backup --vo")
    assert "--volume" in offered
    assert all(word.startswith("--vo") for word in offered)
    assert sorted(complete("safehold completion ")) == ["bash", "fish", "zsh"]


class Zsh:
    """An interactive zsh on a pseudo-terminal: keys go in, the line editor's buffer comes out
    (a widget on ^T appends it to a file), and the screen shows what a listing offered."""

    def __init__(self, home: Path) -> None:
        self.out = home / "buffers"
        master, slave = os.openpty()
        termios.tcsetwinsize(slave, (40, 200))
        self.master = master
        self.screen = b""
        self.process = subprocess.Popen(
            ["zsh", "-f", "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**shell_env(home), "TERM": "xterm"},
            cwd=home,
            start_new_session=True,
        )
        os.close(slave)

    def run(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def complete(self, keys: str, listing: str | None = None) -> str:
        """Types keys (TABs included) and returns the line they left. With ``listing``, waits
        first for the screen to show that pattern: zle draws nothing while keys are pending,
        so ^T goes in only once the listing is there."""
        seen = len(self.screen)
        os.write(self.master, keys.encode())
        if listing is not None:
            self.read_until(lambda: re.search(listing, self.shown(seen)) is not None)
        before = len(self.buffers())
        os.write(self.master, b"\x14")
        self.read_until(lambda: len(self.buffers()) > before)
        return self.buffers()[-1]

    def read_until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.05)[0]:
                self.screen += os.read(self.master, 65536)
        assert done(), self.shown(0)

    def shown(self, start: int) -> str:
        return ANSI.sub(b"", self.screen[start:]).decode(errors="replace")

    def buffers(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def close(self) -> None:
        self.run("exit")
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)


@pytest.fixture(params=["fpath", "eval"])
def zsh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Zsh]:
    # Both ways the --help gives: _safehold in a folder on fpath before compinit, or the
    # script evaluated after it.
    (tmp_path / "zfunc").mkdir()
    (tmp_path / "zfunc" / "_safehold").write_text(script("zsh"))
    fpath = f"fpath=({tmp_path / 'zfunc'} $fpath)" if request.param == "fpath" else ""
    load = f'eval "$({BIN / "safehold"} completion zsh)"' if request.param == "eval" else ""
    (tmp_path / "zshrc").write_text(
        f"""{fpath}
autoload -Uz compinit && compinit -u -d {tmp_path / "zcompdump"}
{load}
bindkey -e
dump() {{ print -r -- "$BUFFER" >> {tmp_path / "buffers"}; BUFFER=; }}
zle -N dump && bindkey '^T' dump
"""
    )
    shell = Zsh(tmp_path)
    shell.run(f"source {tmp_path / 'zshrc'}")
    try:
        yield shell
    finally:
        shell.close()


def test_zsh_completes_on_every_tab(zsh: Zsh) -> None:
    assert zsh.complete("safehold ba\t") == "safehold backup "
    # The second TAB of a shell too (click's script, autoloaded, offered nothing on it).
    assert zsh.complete("safehold ba\t") == "safehold backup "
    assert zsh.complete("safehold completion f\t") == "safehold completion fish "
    # Ambiguous: the common part goes in, the second TAB lists the choices with their help.
    line = zsh.complete("safehold backup --vo\t\t", listing=r"--volume-label\s+--\s+\S")
    assert line.startswith("safehold backup --volume")
    zsh.complete("safehold completion \t\t", listing=r"\bbash\s+zsh\s+fish\b")
