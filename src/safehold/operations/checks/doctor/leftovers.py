"""Doctor's check of what interrupted runs left behind (``operations.journal``).

Every command finishes these first, so doctor (which recovers too) usually finds none; what it
does find is an entry whose resolver failed (the server was down, say), a run still in progress,
or one written on another host. It says which, and what the next command will do about it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import UTC
from pathlib import Path

from .... import naming
from ...._proc import pid_alive
from ....sinks.log import human_bytes
from ....sources import pg_admin
from ....sources.postgres import PgTarget
from ....storage import LocalStorage
from ....storage.local import PARTIAL_MARK
from ... import journal
from ...database.recovery import next_run
from .check import Check, names, sql_name

NAME = "interrupted runs"
SHOWN = 5


def leftovers(backup_dir: Path) -> Check:
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


def partials(backup_dir: Path) -> Check:
    """Temp files of writes whose process is gone (a kill -9 mid-backup or mid-push): never
    backups, only space; the repository's own folder is swept by the next backup."""
    name = "unfinished files"
    if not backup_dir.is_dir():
        return Check(name, "SKIP", f"{backup_dir} does not exist")
    folders = [backup_dir, backup_dir / naming.WAL_DIR, backup_dir / naming.BASE_DIR]
    meta = backup_dir / naming.META
    if meta.is_dir():
        folders += [
            meta,
            *(p for p in sorted(meta.rglob("*")) if p.is_dir() and not p.is_symlink()),
        ]
    stale: list[Path] = []
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and PARTIAL_MARK in entry.name:
                    pid = entry.name.rsplit(PARTIAL_MARK, 1)[1].split("-", 1)[0]
                    if pid.isdigit() and not pid_alive(int(pid)):
                        stale.append(Path(entry.path))
    if not stale:
        return Check(name, "OK", "no temp file of an interrupted write")
    total = sum(p.lstat().st_size for p in stale if p.exists())
    shown = [str(p.relative_to(backup_dir)) for p in stale]
    detail = f"{len(stale)} temp file(s) of writes whose process is gone ({human_bytes(total)}): "
    detail += names(shown)
    fix = "none is a backup: the next backup removes those in the folder itself; rm the others"
    return Check(name, "WARN", detail, fix)


def databases(target: PgTarget, reached: bool) -> Check:
    """Scratch databases a killed restore or drill left on the server (``*_safehold_staging_*``,
    ``*_safehold_drill_*``); the previous copies restores keep on purpose are only counted."""
    name = "leftover databases"
    if not reached:
        return Check(name, "SKIP", "not checked: the server was not reached")
    with pg_admin.admin(target) as conn:
        rows = conn.execute(
            "SELECT datname, pg_database_size(datname) FROM pg_database"
            " WHERE datname ~ '_(safehold_staging|safehold_drill|pre_restore)_[0-9_]+$'"
            " ORDER BY 1"
        ).fetchall()
    kept = [str(r[0]) for r in rows if "_pre_restore_" in str(r[0])]
    scratch = [(str(r[0]), int(r[1])) for r in rows if "_pre_restore_" not in str(r[0])]
    note = ""
    if kept:
        note = f"; {len(kept)} previous database(s) kept by restores: {', '.join(kept[:SHOWN])}"
        note += " (drop them once the restore is proven)"
    if not scratch:
        return Check(name, "OK", "no staging or drill database left behind" + note)
    listed = ", ".join(f"{n} ({human_bytes(size)})" for n, size in scratch[:SHOWN])
    detail = f"staging/drill database(s) of interrupted runs: {listed}{note}"
    fix = (
        "unless a restore or drill is running now ('interrupted runs' names it), as a "
        "superuser: " + "; ".join(f"DROP DATABASE {sql_name(n)}" for n, _ in scratch[:SHOWN])
    )
    return Check(name, "WARN", detail, fix)
