"""Doctor's check of what interrupted runs left behind (``operations.journal``).

Every command finishes these first, so doctor (which recovers too) usually finds none; what it
does find is an entry whose resolver failed (the server was down, say), a run still in progress,
or one written on another host. It says which, and what the next command will do about it.
"""

from __future__ import annotations

import socket
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage import LocalStorage
from . import journal
from .recovery_database import next_run

if TYPE_CHECKING:
    from .doctor import Check

NAME = "interrupted runs"
SHOWN = 5


def leftovers(backup_dir: Path) -> Check:
    from .doctor import Check

    found = journal.entries(LocalStorage(backup_dir))
    if not found:
        return Check(NAME, "OK", "nothing left behind by an interrupted run")
    lines: list[str] = []
    pending = 0
    for entry in found:
        when = entry.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        about = f"{entry.kind} of {entry.purpose or 'a run'} (pid {entry.pid}, {when})"
        if entry.host != socket.gethostname():
            lines.append(f"{about}: written on {entry.host}, left to a run there")
        elif entry.writer_alive():
            lines.append(f"{about}: still running")
        else:
            pending += 1
            will = next_run(entry) or f"resolve it (its '{entry.kind}' resolver)"
            lines.append(f"{about}: interrupted; the next command will {will}")
    more = f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    detail = "; ".join(lines[:SHOWN]) + more
    if not pending:
        return Check(NAME, "OK", detail)
    return Check(
        NAME,
        "WARN",
        detail,
        "run any command that reads the repository (e.g. 'safehold list') to finish them now; "
        "if one keeps coming back, its warning says why",
    )
