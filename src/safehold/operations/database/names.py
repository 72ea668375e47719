"""Which databases a run takes: ``[database] names`` (names and shell patterns such as
``tenant_*``) matched against the databases the server holds.

Expanded at run time, so a tenant created yesterday is in tonight's backup. A name given
outright must exist (a typo must not silently leave a database without backups); a pattern that
matches nothing is only a warning (no tenant yet). A matched database whose name cannot be part
of a file name (``naming.database_name_problem``) is refused on its own, so the others are
still backed up and the run fails at the end.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ... import naming
from ...errors import DatabaseMissing
from ...sources.postgres import PgTarget, connect

# Databases a dump can be taken of: not templates, and open to connections.
SERVER_DATABASES = (
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
)


@dataclass(frozen=True)
class Selection:
    databases: list[str]  # sorted: the order members are dumped and listed in
    refused: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be backed up
    warnings: list[str] = field(default_factory=list)


def server_databases(server: PgTarget) -> list[str]:
    with connect(server, server.maintenance_db, autocommit=True) as conn:
        return [str(row[0]) for row in conn.execute(SERVER_DATABASES).fetchall()]


def select(patterns: Sequence[str], available: Iterable[str], where: str = "") -> Selection:
    """``patterns`` matched against ``available`` (case-sensitive, as PostgreSQL names are)."""
    present = sorted(set(available))
    chosen: set[str] = set()
    warnings = []
    for pattern in patterns:
        if not naming.is_pattern(pattern):
            if pattern not in present:
                raise DatabaseMissing(
                    f"database {pattern!r} (database.names) does not exist on the server"
                    + (f" at {where}" if where else ""),
                    hint="create it, fix the name, or use a pattern (tenant_*) for databases "
                    "that may not exist yet",
                )
            chosen.add(pattern)
            continue
        matched = [name for name in present if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            warnings.append(f"no database on the server matches {pattern!r} (database.names)")
        chosen.update(matched)
    refused = {
        name: problem
        for name in chosen
        if (problem := naming.database_name_problem(name)) is not None
    }
    return Selection(sorted(chosen - set(refused)), refused, warnings)


def select_on_server(server: PgTarget, patterns: Sequence[str]) -> Selection:
    return select(patterns, server_databases(server), f"{server.host}:{server.port}")
