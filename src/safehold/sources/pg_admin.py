"""Database-level work for a safe restore: staging databases, pg_restore, and the swap.

A restore never touches the live database until a fully restored and checked staging database
is ready; then one transaction renames live -> previous and staging -> live and opens previous
to connections again.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from .. import _proc
from ..errors import DatabaseError, IntegrityError, RestoreError, TargetInUse
from .postgres import PgTarget, connect, require_tool_for

MAX_IDENT = 63
_ITEM = re.compile(r"(?:processing|finished) item (\d+)")
# pg_restore's words for an archive that ends early or whose compressed data is corrupt.
_DAMAGED_MARKS = (
    "could not read from input file",
    "unexpected end of file",
    "end of file",
    "could not uncompress data",
    "incorrect data check",
    "invalid block type",
    "unrecognized data block type",
    "did not find magic string",
)


def db_name_with_suffix(base: str, suffix: str) -> str:
    """``base + suffix`` cut to PostgreSQL's 63-byte identifier limit, keeping the suffix."""
    room = MAX_IDENT - len(suffix.encode())
    cut = base.encode()[:room].decode("utf-8", "ignore")
    return cut + suffix


@contextlib.contextmanager
def admin(target: PgTarget) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the maintenance database (CREATE/DROP DATABASE need one)."""
    try:
        conn = connect(target, target.maintenance_db, autocommit=True)
    except DatabaseError:
        if target.maintenance_db != "postgres":
            raise
        conn = connect(target, "template1", autocommit=True)
    with conn:
        yield conn


def exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def other_sessions(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchone()
    return int(row[0]) if row else 0


def create_like(conn: psycopg.Connection[Any], name: str, like: str | None) -> None:
    """Create an empty database, copying owner, encoding and locale from ``like`` if it exists."""
    options: list[sql.Composable] = [sql.SQL("TEMPLATE template0")]
    if like is not None:
        row = conn.execute(
            """SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype
               FROM pg_database WHERE datname = %s""",
            (like,),
        ).fetchone()
        if row is not None:
            owner, encoding, collate, ctype = row
            options += [
                sql.SQL("OWNER {}").format(sql.Identifier(owner)),
                sql.SQL("ENCODING {}").format(sql.Literal(encoding)),
                sql.SQL("LC_COLLATE {}").format(sql.Literal(collate)),
                sql.SQL("LC_CTYPE {}").format(sql.Literal(ctype)),
            ]
    conn.execute(
        sql.SQL("CREATE DATABASE {} ").format(sql.Identifier(name)) + sql.SQL(" ").join(options)
    )


def drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True)
class RoleRights:
    """What the connected role may do that a restore needs (see ``restore_refusal``)."""

    role: str
    superuser: bool
    createdb: bool
    createrole: bool


def role_rights(conn: psycopg.Connection[Any]) -> RoleRights:
    row = conn.execute(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
        " WHERE rolname = current_user"
    ).fetchone()
    if row is None:  # current_user always has a pg_roles row; be safe anyway
        return RoleRights("?", False, False, False)
    return RoleRights(str(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))


def restore_refusal(conn: psycopg.Connection[Any], database: str) -> tuple[str, str] | None:
    """Why this role cannot restore into ``database`` (message, hint), or None when it can.

    A restore creates a staging database (CREATEDB) and, when ``database`` exists, renames it
    aside (its owner or a superuser; a non-superuser owner needs CREATEDB too).
    """
    rights = role_rights(conn)
    if rights.superuser:
        return None
    role = _sql_name(rights.role)
    if not rights.createdb:
        return (
            f"role {rights.role!r} lacks the CREATEDB privilege: a restore builds a staging "
            "database first and renames databases",
            f"as a superuser: ALTER ROLE {role} CREATEDB; or restore as a superuser",
        )
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), pg_has_role(current_user, datdba, 'MEMBER')"
        " FROM pg_database WHERE datname = %s",
        (database,),
    ).fetchone()
    if row is not None and not row[1]:
        name = _sql_name(database)
        return (
            f"role {rights.role!r} does not own database {database!r} (its owner is "
            f"{row[0]!r}): only the owner or a superuser may rename it for the swap",
            f"restore as {row[0]!r} or a superuser, or as a superuser: "
            f"ALTER DATABASE {name} OWNER TO {role}",
        )
    return None


def restore_rights_report(target: PgTarget) -> tuple[bool, str, str]:
    """For ``doctor``: whether a restore of ``target.dbname`` may run, what was found, the fix."""
    with admin(target) as conn:
        refused, rights = restore_refusal(conn, target.dbname), role_rights(conn)
    if refused:
        return False, *refused
    how = "is a superuser" if rights.superuser else "has CREATEDB and may rename the database"
    return True, f"role {rights.role!r} {how}: restore can stage and swap {target.dbname!r}", ""


def _sql_name(name: str) -> str:
    """``name`` as typed in a statement: bare when PostgreSQL would read it back unchanged."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def try_lock_restore(conn: psycopg.Connection[Any], dbname: str) -> bool:
    """Server-side guard so two restores of one database never race each other."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext('safehold-restore:' || %s))", (dbname,)
    ).fetchone()
    return bool(row and row[0])


def pg_restore(
    target: PgTarget,
    dbname: str,
    archive: Path,
    *,
    jobs: int,
    no_owner: bool,
    server_version_num: int,
    on_item: Callable[[], None] | None = None,
    app_name: str = "safehold",
) -> None:
    tool, _ = require_tool_for(target, "pg_restore", server_version_num)
    argv = [tool, "--no-password", "--exit-on-error", "--verbose", f"--jobs={max(1, jobs)}"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    argv += ["--dbname", dbname, str(archive)]

    seen: set[str] = set()

    def progress(line: str) -> None:
        # Parallel pg_restore names an item more than once (processing/launching/finished):
        # count each TOC id once.
        match = _ITEM.search(line)
        if on_item is not None and match and match[1] not in seen:
            seen.add(match[1])
            on_item()

    # Tagged like our own session: a run killed mid-way has its pg_restore ended by the next.
    proc = _proc.spawn(argv, env=target.env() | {"PGAPPNAME": app_name}, stdout=None)
    tail = _proc.StderrTail(proc.stderr, progress) if proc.stderr else None
    code = proc.wait()
    if code != 0:
        text = _proc.redact(tail.text() if tail else "", [target.password])
        errors = [ln for ln in text.splitlines() if "error" in ln.lower() or "detail" in ln.lower()]
        detail = "; ".join(errors[-3:] or text.splitlines()[-1:]) or "no message"
        if any(mark in text for mark in _DAMAGED_MARKS):
            raise IntegrityError(
                f"the backup file is damaged or truncated: {detail}",
                hint="restore an older backup ('safehold list' shows them)",
            )
        hint = "see the pg_restore messages above; fix the cause and run the restore again"
        if "role" in text and "does not exist" in text:
            hint = "the dump names roles this server lacks: create them, or restore with --no-owner"
        raise RestoreError(f"pg_restore failed: {detail}", hint=hint)


def psql_restore(
    target: PgTarget,
    dbname: str,
    sql_chunks: Iterable[bytes],
    *,
    server_version_num: int,
    app_name: str = "safehold",
) -> None:
    """Run plain SQL in one transaction that stops at the first error.

    When ``sql_chunks`` raises (a damaged or truncated file), psql is stopped before it reaches
    the end of its input: an end of input would commit the statements read so far.
    """
    tool, _ = require_tool_for(target, "psql", server_version_num)
    argv = [tool, "--no-password", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1"]
    # psql applies --single-transaction only to -c/-f input: "-f -" is stdin as a file.
    argv += ["--single-transaction", "--dbname", dbname, "--file", "-"]
    env = target.env() | {"PGAPPNAME": app_name}
    proc = _proc.spawn(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    tail = _proc.StderrTail(proc.stderr) if proc.stderr else None
    assert proc.stdin is not None
    try:
        for chunk in sql_chunks:
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # psql stopped at an error: its exit status and messages say which
    except BaseException:
        _proc.stop(proc)
        raise
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    code = proc.wait()
    if code != 0:
        text = _proc.redact(tail.text() if tail else "", [target.password])
        errors = [ln for ln in text.splitlines() if "error" in ln.lower() or "detail" in ln.lower()]
        detail = "; ".join(errors[-3:] or text.splitlines()[-1:]) or f"exit status {code}"
        hint = "fix the statement named above (the file's line number follows <stdin>:)"
        if "role" in text and "does not exist" in text:
            hint = "the dump names roles this server lacks: create them, then restore again"
        raise RestoreError(f"psql failed: {detail}", hint=hint)


def toc_entries(target: PgTarget, archive: IO[bytes] | Path, server_version_num: int) -> list[str]:
    """``pg_restore --list``: proves a file is a dump and gives its table of contents."""
    tool, _ = require_tool_for(target, "pg_restore", server_version_num)
    if isinstance(archive, Path):
        out = _proc.run([tool, "--list", str(archive)], timeout=600)
    else:
        out = _proc.run([tool, "--list"], input_file=archive, timeout=600)
    if out.returncode != 0:
        raise DatabaseError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "")
    return [ln for ln in out.stdout.splitlines() if ln and not ln.startswith(";")]


def swap_in(
    conn: psycopg.Connection[Any],
    *,
    staging: str,
    live: str,
    previous: str,
    session_timeout: float = 15.0,
    closing: Callable[[], None] = lambda: None,
    reopened: Callable[[], None] = lambda: None,
) -> bool:
    """Make ``staging`` the database called ``live``; keep the old one as ``previous``.

    ``live`` is closed to new connections while its sessions end; ``closing`` runs before that
    (to journal it), ``reopened`` once the old database accepts connections again. The renames
    and the re-opening of ``previous`` commit in one transaction, so no instant exists where the
    swap is done and the old database stays closed. Returns whether an old database existed. On
    any failure the live database is as it was, open again.
    """
    if not exists(conn, live):
        conn.execute(_rename(staging, live))
        return False
    closing()
    _set_connections(conn, live, allowed=False)
    try:
        _end_sessions(conn, live, session_timeout)
        with conn.transaction():
            conn.execute(_rename(live, previous))
            conn.execute(_rename(staging, live))
            _set_connections(conn, previous, allowed=True)
    except pgerr.ObjectInUse as exc:
        _set_connections(conn, live, allowed=True)
        reopened()
        raise TargetInUse(
            f"database {live!r} is still in use: {exc.diag.message_primary}",
            hint="stop the application using it, then run the restore again",
        ) from None
    except BaseException:
        _set_connections(conn, live, allowed=True)
        reopened()
        raise
    reopened()
    return True


def _rename(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(old), sql.Identifier(new)
    )


def allow_connections(conn: psycopg.Connection[Any], name: str) -> bool:
    """Open ``name`` to connections if it exists and is closed; whether it was closed."""
    query = "SELECT datallowconn FROM pg_database WHERE datname = %s"
    row = conn.execute(query, (name,)).fetchone()
    if row is None or row[0]:
        return False
    _set_connections(conn, name, allowed=True)
    return True


def tag_session(conn: psycopg.Connection[Any], tag: str) -> None:
    """Name this session (application_name) so a later run can end it if we are killed."""
    conn.execute("SELECT set_config('application_name', %s, false)", (tag,))


def end_tagged_sessions(conn: psycopg.Connection[Any], tag: str) -> int:
    """Ask the sessions named ``tag`` to end; how many still ran when asked."""
    rows = conn.execute(
        """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE application_name = %s AND pid <> pg_backend_pid()""",
        (tag,),
    ).fetchall()
    return len(rows)


def _set_connections(conn: psycopg.Connection[Any], name: str, *, allowed: bool) -> None:
    try:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allowed)
            )
        )
    except pgerr.InsufficientPrivilege:
        raise RestoreError(
            f"this user may not take database {name!r} offline for the swap",
            hint="restore as the database's owner or a superuser",
        ) from None


def _end_sessions(conn: psycopg.Connection[Any], name: str, timeout: float) -> None:
    try:
        conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = %s AND pid <> pg_backend_pid()""",
            (name,),
        )
    except pgerr.InsufficientPrivilege as exc:
        raise TargetInUse(
            f"database {name!r} is in use by sessions this user may not end "
            f"({exc.diag.message_primary})",
            hint="stop the application using it, or restore as a role with pg_signal_backend",
        ) from None
    deadline = time.monotonic() + timeout
    while other_sessions(conn, name):
        if time.monotonic() > deadline:
            raise TargetInUse(
                f"sessions on database {name!r} did not end within {timeout:.0f}s",
                hint="stop the application using it, then run the restore again",
            )
        time.sleep(0.1)
