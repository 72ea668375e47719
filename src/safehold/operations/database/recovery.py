"""Finishing what a killed database restore left behind (journal resolvers).

A restore records three kinds of entry before it makes the thing they name:

- ``staging_database``: the database it restores into. Interrupted, it is dropped: its name
  carries the restore's time stamp, so it is ours; once renamed in, the name no longer exists
  and nothing is dropped.
- ``closed_database``: the live database about to be closed to connections for the swap. The
  rename and the re-opening commit together, so an interrupted swap leaves either the old
  database closed under its own name or nothing closed; either way connections are allowed on
  both names again (idempotent).
- ``previous_database``: with ``--drop-previous``, the old database renamed aside by the swap,
  to be dropped after it. Interrupted, it is dropped if it exists (only a committed swap makes
  the name, with its time stamp; the restore had been asked to drop it).
- ``restore_temp``: the decompressed dump pg_restore reads; removed.

Before touching a database, the dead run's own server sessions (tagged by application_name)
are ended and waited for: a statement still running on the server after its client was killed
(a CREATE DATABASE, the swap's transaction) then either committed or rolled back, and nothing
of that run moves underneath the resolver.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ...errors import SafeholdError
from ...sources import pg_admin
from ...sources.postgres import PgTarget
from .. import journal
from .archive import TEMP_KIND, is_temp_name

STAGING_KIND = "staging_database"
CLOSED_KIND = "closed_database"
PREVIOUS_KIND = "previous_database"
SESSION_WAIT_S = 30.0


def staging_data(target: PgTarget, database: str, staging: str, session: str) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "database": database,
        "staging": staging,
        "session": session,
    }


def closed_data(
    target: PgTarget, live: str, previous: str, staging: str, session: str
) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "live": live,
        "previous": previous,
        "staging": staging,
        "session": session,
    }


def previous_data(target: PgTarget, live: str, previous: str, session: str) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "live": live,
        "previous": previous,
        "session": session,
    }


@journal.resolver(STAGING_KIND)
def drop_staging(entry: journal.Entry, context: journal.Context) -> str:
    name = str(entry.data["staging"])
    with pg_admin.admin(_server(entry, context)) as conn:
        _end_dead_sessions(conn, entry)
        if not pg_admin.exists(conn, name):
            return f"the staging database {name!r} is gone already (renamed in or never made)"
        pg_admin.drop(conn, name)
    return f"dropped the staging database {name!r} it left; {entry.data['database']!r} is as it was"


@journal.resolver(CLOSED_KIND)
def reopen(entry: journal.Entry, context: journal.Context) -> str:
    live, previous = str(entry.data["live"]), str(entry.data["previous"])
    with pg_admin.admin(_server(entry, context)) as conn:
        _end_dead_sessions(conn, entry)
        opened = [name for name in (live, previous) if pg_admin.allow_connections(conn, name)]
        swapped = pg_admin.exists(conn, previous)
    state = (
        f"the swap had committed: {live!r} is the restored database, the old one is {previous!r}"
        if swapped
        else f"the swap had not happened: {live!r} holds its old content"
    )
    if opened:
        return f"allowed connections again on {', '.join(map(repr, opened))} ({state})"
    return f"connections were allowed already ({state})"


@journal.resolver(PREVIOUS_KIND)
def drop_previous(entry: journal.Entry, context: journal.Context) -> str:
    live, previous = str(entry.data["live"]), str(entry.data["previous"])
    with pg_admin.admin(_server(entry, context)) as conn:
        _end_dead_sessions(conn, entry)
        if not pg_admin.exists(conn, previous):
            # Its DROP, still running on the server when the run was killed, may have ended it.
            return (
                f"nothing to drop: the previous database {previous!r} is gone (the swap had not "
                "committed, or the interrupted run's DROP finished on the server)"
            )
        pg_admin.drop(conn, previous)
    return (
        f"{live!r} had been restored; dropped the previous database {previous!r} "
        "as it asked (--drop-previous)"
    )


@journal.resolver(TEMP_KIND)
def remove_temp(entry: journal.Entry, _context: journal.Context) -> str:
    path = Path(str(entry.data["path"]))
    if not is_temp_name(path):  # never remove a file whose name we did not make
        return f"left {path} alone: not a name a restore makes"
    try:
        path.unlink()
    except FileNotFoundError:
        return f"its temporary file {path} is gone already"
    except OSError as exc:
        raise SafeholdError(f"cannot remove {path}: {exc.strerror or exc}") from None
    return f"removed its temporary file {path}"


def next_run(entry: journal.Entry) -> str | None:
    """What the next command will do about ``entry`` (for doctor), or None for another kind."""
    said: dict[str, Callable[[dict[str, Any]], str]] = {
        STAGING_KIND: lambda d: (
            f"drop the staging database {d['staging']!r} on "
            f"{d['host']}:{d['port']} (if still there)"
        ),
        CLOSED_KIND: lambda d: (
            f"allow connections again on {d['live']!r} and {d['previous']!r} "
            f"on {d['host']}:{d['port']} (whichever exist)"
        ),
        PREVIOUS_KIND: lambda d: (
            f"drop {d['previous']!r} on {d['host']}:{d['port']} if the swap committed "
            "(--drop-previous)"
        ),
        TEMP_KIND: lambda d: f"remove the temporary file {d['path']}",
    }
    make = said.get(entry.kind)
    return make(entry.data) if make else None


def _server(entry: journal.Entry, context: journal.Context) -> PgTarget:
    """The configured login, on the server the entry names (where the database was made)."""
    target: PgTarget = context.get("pg")
    host, port = str(entry.data["host"]), int(entry.data["port"])
    return dataclasses.replace(target, host=host, port=port)


def _end_dead_sessions(conn: psycopg.Connection[Any], entry: journal.Entry) -> None:
    tag = str(entry.data.get("session") or "")
    if not tag:
        return
    deadline = time.monotonic() + SESSION_WAIT_S
    while pg_admin.end_tagged_sessions(conn, tag):
        if time.monotonic() > deadline:
            raise SafeholdError(
                f"sessions of the interrupted run ({tag}) did not end within {SESSION_WAIT_S:.0f}s"
            )
        time.sleep(0.1)
