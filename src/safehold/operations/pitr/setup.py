"""Server settings for continuous archiving: what ``pitr setup`` prints and applies, and how
the server calls safehold back (archive_command / restore_command)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ..._proc import shell_word
from ...sources.postgres import PgTarget, connect


def server_settings(
    command: str, backup_dir: Path, config: Path | None = None, *, ahead: bool = True
) -> dict[str, str]:
    """What the server needs for continuous archiving into ``backup_dir`` (and, through the
    config file, into its copy locations, encrypted when configured). ``ahead``: the command
    first takes the marker of a segment an earlier push already archived (``wal_ahead``)."""
    push = f"{command} wal-push --backup-dir {shell_word(str(backup_dir.absolute()))}"
    if config is not None:
        push += f" --config {shell_word(str(config.absolute()))}"
    push += " %p" if ahead else " --ahead 0 %p"
    if ahead:
        from .ahead import archive_command

        push = archive_command(push, backup_dir)
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": push,
        "archive_timeout": "60",
    }


def apply_settings(target: PgTarget, settings: dict[str, str]) -> list[str]:
    """``ALTER SYSTEM`` + reload; returns the settings that wait for a restart."""
    from psycopg import sql  # only here: restore and the WAL commands never need it

    with connect(target, target.maintenance_db, autocommit=True) as conn:
        for name, value in settings.items():
            statement = sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)
            )
            conn.execute(statement)
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster re-reads its files asynchronously
        rows = conn.execute(
            "SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)",
            (list(settings),),
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def which_safehold() -> str:
    """How the server should call this safehold: the installed script next to the running
    interpreter, else ``python -m safehold``."""
    script = Path(sys.executable).parent / "safehold"
    if script.is_file():
        return shell_word(str(script))
    found = shutil.which("safehold")
    return shell_word(found) if found else f"{shell_word(sys.executable)} -m safehold"
