"""The sample application schema: what a per-user containerized app keeps in PostgreSQL."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from ..sources.postgres import PgTarget, connect

if TYPE_CHECKING:  # psycopg loads on use: importing the sandbox package stays cheap
    import psycopg


def load_sample(target: PgTarget, dbname: str, *, users: int = 200) -> None:
    """Create ``dbname`` (if needed) and fill it with the sample schema and ``users`` users."""
    from psycopg import sql

    with connect(target, target.maintenance_db, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    schema = resources.files(__package__).joinpath("sample.sql").read_text(encoding="utf-8")
    with connect(target, dbname) as conn:
        conn.execute(schema)
        _fill(conn, users)
        conn.commit()


def _fill(conn: psycopg.Connection[Any], users: int) -> None:
    conn.execute("SELECT app.seed(%s)", (users,))
