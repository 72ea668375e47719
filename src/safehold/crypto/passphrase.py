"""Where passphrases come from: a file (first line), an environment variable (named in the
config) or a command (argv from ``shlex.split``, run without a shell; stdout without its
trailing newline). Never argv, never a log line: messages name the source, not the secret."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from .. import _proc
from ..errors import ConfigError

SECRET_MAX_BYTES = 64 * 1024
COMMAND_TIMEOUT_S = 60.0


def read_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(SECRET_MAX_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} {path}: {exc.strerror or exc}",
            hint=f"check the path and permissions of the {what}",
        ) from None


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


def read_passphrase(
    passphrase_file: Path | None = None,
    passphrase_env: str | None = None,
    passphrase_command: str | None = None,
) -> tuple[str, str] | None:
    """The passphrase and where it came from, from the one source given (None if none is)."""
    given = [s for s in (passphrase_file, passphrase_env, passphrase_command) if s]
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(
            "more than one passphrase source is set",
            hint="set only one of passphrase_file, passphrase_env and passphrase_command",
        )
    if passphrase_file is not None:
        text = read_file(passphrase_file, "passphrase file").decode("utf-8", "replace")
        secret, source = _first_line(text), f"passphrase file {passphrase_file}"
    elif passphrase_env:
        secret, source = (
            os.environ.get(passphrase_env, ""),
            f"environment variable {passphrase_env}",
        )
        if not secret:
            raise ConfigError(
                f"the environment variable {passphrase_env} is not set or empty",
                hint=f"export {passphrase_env} with the passphrase, or use a passphrase file",
            )
    else:
        assert passphrase_command is not None
        secret, source = _run_passphrase_command(passphrase_command), "passphrase command"
    if not secret:
        raise ConfigError(f"the {source} gave an empty passphrase", hint=f"check the {source}")
    return secret, source


def _run_passphrase_command(command: str) -> str:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"cannot parse the passphrase command: {exc}") from None
    if not argv:
        raise ConfigError("the passphrase command is empty")
    try:
        done = _proc.run(argv, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"the passphrase command ({argv[0]}) did not finish in {COMMAND_TIMEOUT_S:g} s",
            hint="the command must print the passphrase without asking anything",
        ) from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise ConfigError(
            f"the passphrase command ({argv[0]}) failed with exit status {done.returncode}: "
            f"{tail[0][:200]}",
            hint="run the command by hand; it must print the passphrase on stdout",
        )
    return done.stdout.rstrip("\r\n")
