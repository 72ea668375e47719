"""Doctor's checks of the database server: pg_isready's question (TCP, then the protocol), the
login, the database (including one that exists but refuses connections), pg_dump/pg_restore
against its version, and, when the server runs on this host, free space in its data folder.

"On this host" is decided from the server's own answer: the backend serving our session is
a process here (/proc/PID) whose working folder is the ``data_directory`` the server reports.
That process's ids are the OS user the archive_command runs as (``doctor_wal``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
from pathlib import Path
from typing import Any

from ....errors import AuthenticationFailed, DatabaseMissing, DatabaseUnreachable, SafeholdError
from ....sinks.log import human_bytes
from ....sources.postgres import PgTarget, connect, require_tool_for, tool_major
from .check import Check, ServerProcess, State, sql_name

FAIL_PERCENT = 5.0  # free space in the data folder's file system under this: FAIL
WARN_PERCENT = 10.0
# The server's words when the database is there but will not take this session (the login was
# accepted first: PostgreSQL authenticates before it opens the database).
_REFUSING = re.compile(
    r"is not currently accepting connections|too many connections for database"
    r"|permission denied for database"
)


def database(target: PgTarget, state: State) -> list[Check]:
    where = f"{target.host}:{target.port}"
    server_ok = Check("database server", "OK", f"PostgreSQL answers at {where}")
    login_ok = Check("database login", "OK", f"user {target.user!r} logged in")
    skip = "not checked: the server was not reached"
    try:
        with connect(target, autocommit=True) as conn:
            state.server_version_num = conn.info.server_version
            row = conn.execute(
                "SELECT pg_database_size(current_database()),"
                " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            ).fetchone()
        state.database_bytes = int(row[0]) if row else None
        state.superuser = bool(row and row[1])
        size = human_bytes(state.database_bytes) if state.database_bytes is not None else "?"
        db_check = Check("database", "OK", f"database {target.dbname!r} exists ({size})")
    except DatabaseUnreachable as exc:
        if _REFUSING.search(exc.message):
            db_check = _refusing(target, state, exc.message)
        else:
            detail = f"server down or unreachable: {exc.message}{_tcp(target)}"
            return [
                Check("database server", "FAIL", detail, exc.hint or ""),
                Check("database login", "SKIP", skip),
                Check("database", "SKIP", skip),
            ]
    except AuthenticationFailed as exc:
        return [
            server_ok,
            Check("database login", "FAIL", f"credentials rejected: {exc.message}", exc.hint or ""),
            Check("database", "SKIP", "not checked: the login was refused"),
        ]
    except DatabaseMissing as exc:
        _maintenance_facts(target, state)  # the login was accepted: the server authenticates first
        db_check = Check("database", "FAIL", f"database missing: {exc.message}", exc.hint or "")
    if state.server_version_num is not None:
        num = state.server_version_num
        detail = f"PostgreSQL {num // 10000}.{num % 10000} answers at {where}"
        server_ok = Check("database server", "OK", detail)
    return [server_ok, login_ok, db_check]


def _maintenance_facts(target: PgTarget, state: State) -> dict[str, Any] | None:
    """Version and rights through the maintenance database; the target database's row when
    it exists. None when that database cannot be used either."""
    with (
        contextlib.suppress(SafeholdError),
        connect(target, target.maintenance_db, autocommit=True) as conn,
    ):
        state.server_version_num = conn.info.server_version
        row = conn.execute(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
            " datallowconn, datconnlimit, has_database_privilege(datname, 'CONNECT')"
            " FROM (SELECT 1) one LEFT JOIN pg_database ON datname = %s",
            (target.dbname,),
        ).fetchone()
        if row is not None:
            state.superuser = bool(row[0])
            return {"allow": row[1], "limit": row[2], "connect": row[3]}
    return None


def _refusing(target: PgTarget, state: State, message: str) -> Check:
    """The database exists and the server is up, but this session may not open it."""
    facts = _maintenance_facts(target, state)
    name = target.dbname
    quoted = sql_name(name)
    closed = "if a safehold restore closed it for its swap, 'interrupted runs' says so and the "
    closed += "next command reopens it; otherwise, as a superuser: "
    if facts and facts["allow"] is False:
        why, fix = (
            "ALLOW_CONNECTIONS is false",
            closed + f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS true",
        )
    elif facts and facts["limit"] is not None and facts["limit"] >= 0 and "too many" in message:
        why = f"its CONNECTION LIMIT ({facts['limit']}) is reached"
        fix = f"as a superuser: ALTER DATABASE {quoted} CONNECTION LIMIT -1 (or a higher limit)"
    elif "permission denied" in message:
        why = f"user {target.user!r} lacks the CONNECT privilege on it"
        fix = f"as a superuser: GRANT CONNECT ON DATABASE {quoted} TO {target.user}"
    else:
        why, fix = message, "see the server log for why it refuses the session"
    detail = f"database {name!r} exists but does not accept connections: {why}"
    return Check("database", "FAIL", detail, fix)


def _tcp(target: PgTarget) -> str:
    """pg_isready's first question: does anything accept TCP connections there at all?"""
    if target.host.startswith("/"):
        return ""  # a unix socket folder
    try:
        with socket.create_connection((target.host, target.port), timeout=5):
            return " (its TCP port is open: something listens there, but not as PostgreSQL)"
    except OSError:
        return ""  # libpq's own words (refused, timeout, unknown host) already say it


def tool(target: PgTarget, name: str, state: State) -> Check:
    if state.server_version_num is None:
        path = target.tool(name)
        major, _ = tool_major(path)
        detail = f"{name} {major} at {path}; not compared with the server (it was not reached)"
        return Check(name, "OK", detail)
    path, _ = require_tool_for(target, name, state.server_version_num)  # FAIL when older
    major, _ = tool_major(path)
    server = state.server_version_num // 10000
    relation = "the same major version" if major == server else "newer tools read older servers"
    return Check(name, "OK", f"{name} {major} at {path}, server {server}: {relation}")


# --- the server on this host ------------------------------------------------------------------


def locate(target: PgTarget, state: State) -> None:
    """Fill ``state.server`` when the server runs on this host, else say why not."""
    if not state.reached:
        return
    with connect(target, target.maintenance_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_backend_pid(), CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')"
            " THEN current_setting('data_directory') END"
        ).fetchone()
        if row is None or row[1] is None:
            state.server_unknown = (
                f"user {target.user!r} may not read data_directory (superusers and members "
                "of pg_read_all_settings may)"
            )
            return
        # Read while our session lives: its backend process exits when we disconnect.
        state.server, state.server_unknown = _process(int(row[0]), Path(str(row[1])))


def _process(pid: int, data: Path) -> tuple[ServerProcess | None, str]:
    elsewhere = f"the server runs on another host or in a container ({data} is not its folder here)"
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        owner = data.stat().st_uid
    except OSError:
        return None, elsewhere
    with contextlib.suppress(PermissionError):  # another user's process: the ids must do
        if Path(os.readlink(f"/proc/{pid}/cwd")) != data:
            return None, elsewhere
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid, gid = int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])  # effective ids
    if uid != owner:
        return None, elsewhere
    groups = tuple(int(g) for g in fields.get("Groups", "").split())
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        environ: dict[str, str] | None = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
    except OSError:
        environ = None
    return ServerProcess(data, pid, uid, gid, groups, user, environ), ""


def data_folder(state: State) -> Check:
    name = "data folder space"
    server = state.server
    if server is None:
        return Check(name, "SKIP", f"not checked: {state.server_unknown}")
    usage = os.statvfs(server.data_directory)
    free, total = usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize
    percent = 100.0 * free / total if total else 0.0
    db = state.database_bytes or 0
    detail = (
        f"{human_bytes(free)} free of {human_bytes(total)} ({percent:.0f}%) on the file system "
        f"of the server's data folder {server.data_directory}"
    )
    if db:
        detail += f"; the database takes {human_bytes(db)} and a restore stages a second copy"
    fix = (
        "free space on that file system (a restore keeps the previous database as "
        "NAME_pre_restore_...: drop those no longer needed), or move the data folder to a "
        "larger disk"
    )
    if percent < FAIL_PERCENT or free < db:
        why = "a restore's staging copy will not fit" if free < db else "the server may stop"
        return Check(name, "FAIL", f"{detail}: {why}", fix)
    if percent < WARN_PERCENT or free < 2 * db:
        return Check(name, "WARN", f"{detail}: little room left", fix)
    return Check(name, "OK", detail)
