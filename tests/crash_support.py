"""What the kill tests share: reading a run's JSON log up to the step where it is stopped."""

from __future__ import annotations

import json
import subprocess


def message(line: str) -> str:
    """The message of one ``--log-format json`` line (a line that is not JSON, as it is)."""
    try:
        return str(json.loads(line).get("message", line))
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return line


def read_until(proc: subprocess.Popen[str], step: str) -> tuple[list[str], bool]:
    """The messages ``proc`` logs on stderr up to the first naming ``step``, and whether one
    did (False: the run ended first)."""
    assert proc.stderr is not None
    lines: list[str] = []
    while line := proc.stderr.readline():
        lines.append(message(line))
        if step in lines[-1]:
            return lines, True
    return lines, False
