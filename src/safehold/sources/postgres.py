"""PostgreSQL as a backup source: connections with classified errors, versions, and a pg_dump
stream whose per-table row counts come from the very snapshot the dump reads."""

from __future__ import annotations

import os
import re
import select
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg takes ~0.1 s to import: the WAL commands never connect
    import psycopg

from .. import _proc
from ..errors import (
    AuthenticationFailed,
    DatabaseError,
    DatabaseMissing,
    DatabaseUnreachable,
    ToolError,
)

CHUNK = 1 << 20
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTarget:
    """Where a database lives and how to log in. The password never reaches argv or repr."""

    host: str = "localhost"
    port: int = 5432
    dbname: str = "container_app"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    bin_dir: Path | None = None
    maintenance_db: str = "postgres"
    connect_timeout: int = 10

    def with_db(self, dbname: str) -> PgTarget:
        return PgTarget(
            self.host,
            self.port,
            dbname,
            self.user,
            self.password,
            self.bin_dir,
            self.maintenance_db,
            self.connect_timeout,
        )

    def tool(self, name: str) -> str:
        return _proc.find_tool(name, self.bin_dir)

    def env(self) -> dict[str, str]:
        """libpq settings for child tools: host and user by env, the password never in argv."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": "safehold",
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def connect(
    target: PgTarget, dbname: str | None = None, *, autocommit: bool = False
) -> psycopg.Connection[Any]:
    import psycopg

    name = dbname or target.dbname
    try:
        return psycopg.connect(
            host=target.host,
            port=target.port,
            dbname=name,
            user=target.user,
            password=target.password,
            connect_timeout=target.connect_timeout,
            application_name="safehold",
            autocommit=autocommit,
        )
    except psycopg.OperationalError as exc:
        raise classify_connect_error(str(exc), target, name) from None


def classify_connect_error(text: str, target: PgTarget, dbname: str) -> DatabaseError:
    text = _proc.redact(text, [target.password]).strip()
    where = f"{target.host}:{target.port}"
    if "password authentication failed" in text or "no password supplied" in text:
        return AuthenticationFailed(
            f"the server at {where} rejected the credentials of user {target.user!r}",
            hint="set PGPASSWORD or DB_PASSWORD, add the password to ~/.pgpass, or set "
            "password_file in the config",
        )
    if re.search(r'role ".*" does not exist', text):
        return AuthenticationFailed(
            f"user {target.user!r} does not exist on the server at {where}",
            hint="check DB_USER",
        )
    if re.search(r'database ".*" does not exist', text):
        return DatabaseMissing(
            f"database {dbname!r} does not exist on the server at {where}",
            hint="check DB_NAME, or restore with --target-db to create it",
        )
    return DatabaseUnreachable(
        f"cannot reach the PostgreSQL server at {where}: {_cause(text)}",
        hint=f"check DB_HOST/DB_PORT and that the server runs (pg_isready -h {target.host} "
        f"-p {target.port})",
    )


def _cause(text: str) -> str:
    """libpq's useful words ("Connection refused", "timeout expired"), without its boilerplate."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "failed:" in line:
            return line.rsplit("failed:", 1)[1].strip()
    return lines[0] if lines else "unknown error"


def tool_major(tool_path: str) -> tuple[int, str]:
    out = _proc.run([tool_path, "--version"], timeout=30)
    match = _VERSION.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise ToolError(f"cannot tell the version of {tool_path}: {out.stdout or out.stderr}")
    return int(match[1]), out.stdout.strip()


def require_tool_for(target: PgTarget, name: str, server_version_num: int) -> tuple[str, str]:
    """Find ``name`` and refuse it when it is older than the server it must talk to."""
    path = target.tool(name)
    major, text = tool_major(path)
    server_major = server_version_num // 10000
    if major < server_major:
        raise ToolError(
            f"{name} {major} is older than the server ({server_major}) and cannot handle it",
            hint=f"install the PostgreSQL {server_major} client tools (e.g. apt-get install "
            f"postgresql-client-{server_major}) or set pg_bin_dir in the config",
        )
    return path, text


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Ordinary tables whose rows pg_dump writes: not catalogs, temp or extension-owned."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    return [(str(schema), str(name)) for schema, name in rows]


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    from psycopg import sql

    counts: dict[str, int] = {}
    for schema, name in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(name)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{name}"] = int(row[0]) if row else 0
    return counts


class DumpStream:
    """``pg_dump -Fc`` on an exported snapshot, read in chunks; counts rows in that snapshot.

    Usage: ``with DumpStream(...) as dump: for chunk in dump: ...``; after the ``with`` block
    ``dump.facts`` holds the manifest facts. Leaving the block early stops pg_dump.

    With ``into`` (the descriptor of an empty regular file) pg_dump writes there itself instead:
    such an output can seek, so pg_dump goes back to its table of contents at the end and fills
    in each table's data offset, which ``pg_restore --jobs`` needs to seek straight to a table
    and to schedule the largest first. ``wait`` then tells when it is done.
    """

    def __init__(
        self, target: PgTarget, *, compress_level: int | None, into: int | None = None
    ) -> None:
        self.target = target
        self.compress_level = compress_level  # None: pg_dump's default gzip
        self.into = into
        self.facts: dict[str, Any] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._proc: Any = None
        self._stderr: _proc.StderrTail | None = None
        self._counter: threading.Thread | None = None
        self._count_error: BaseException | None = None
        self._finished = False
        self._pidfd: int | None = None

    def __enter__(self) -> DumpStream:
        # Autocommit, so the BEGIN below is the transaction that owns the exported snapshot.
        conn = connect(self.target, autocommit=True)
        self._conn = conn
        try:
            self._start(conn)
        except BaseException:
            self._cleanup()
            raise
        return self

    def _start(self, conn: psycopg.Connection[Any]) -> None:
        server_num = conn.info.server_version
        pg_dump, dump_version = require_tool_for(self.target, "pg_dump", server_num)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        version_row = conn.execute("SELECT version()").fetchone()
        assert snapshot_row and size_row and version_row
        self.facts = {
            "database": self.target.dbname,
            "host": self.target.host,
            "port": self.target.port,
            "server_version": str(version_row[0]),
            "server_version_num": server_num,
            "pg_dump_version": dump_version,
            "database_size": int(size_row[0]),
            "format": "custom",
        }
        argv = [pg_dump, "--format=custom", f"--snapshot={snapshot_row[0]}", "--no-password"]
        if self.compress_level is not None:
            argv.append(f"--compress={self.compress_level}")
        argv += ["--dbname", self.target.dbname]
        out = self.into if self.into is not None else subprocess.PIPE
        self._proc = _proc.spawn(argv, env=self.target.env(), stdout=out)
        self._stderr = _proc.StderrTail(self._proc.stderr)
        # Counting runs beside the dump, in the same snapshot, on the exporting connection.
        self._counter = threading.Thread(target=self._count, args=(conn,), daemon=True)
        self._counter.start()

    def _count(self, conn: psycopg.Connection[Any]) -> None:
        try:
            # The count runs beside the dump and only has to finish before it: parallel workers
            # would take cores from pg_dump's COPY instead.
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            self.facts["tables"] = count_rows(conn)
        except BaseException as exc:
            self._count_error = exc

    def wait(self, timeout: float) -> bool:
        """Whether pg_dump has exited, waiting at most ``timeout`` seconds."""
        if self._pidfd is None:
            try:  # readable the moment the child exits; Popen.wait(timeout) polls every 50 ms
                self._pidfd = os.pidfd_open(self._proc.pid)
            except (AttributeError, OSError):
                self._pidfd = -1
        if self._pidfd >= 0:
            select.select([self._pidfd], [], [], timeout)
            return self._proc.poll() is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __iter__(self) -> Iterator[memoryview]:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        stdout = self._proc.stdout
        while True:
            got = stdout.readinto(buffer)
            if not got:
                return
            yield view[:got]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.finish()
        finally:
            self._cleanup()

    def finish(self) -> None:
        """Wait for pg_dump and the row counts; raise if either failed. Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        code = self._proc.wait()
        stderr = self._stderr.text() if self._stderr else ""
        if self._counter is not None:
            self._counter.join()
        if code != 0:
            raise dump_failure(stderr, self.target)
        if self._count_error is not None:
            raise DatabaseError(f"counting rows for the manifest failed: {self._count_error}")

    def _cleanup(self) -> None:
        if self._pidfd is not None and self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = None
        if self._proc is not None:
            _proc.stop(self._proc)
            if self._proc.stdout:
                self._proc.stdout.close()
        if self._counter is not None:
            self._counter.join(timeout=30)
        if self._conn is not None:
            self._conn.close()


def dump_failure(stderr: str, target: PgTarget) -> DatabaseError | ToolError:
    text = _proc.redact(stderr, [target.password])
    if "server version mismatch" in text:
        return ToolError(
            "pg_dump is older than the server and refused to dump it",
            hint="install the matching PostgreSQL client tools or set pg_bin_dir",
        )
    if "connection to server" in text or "could not connect" in text:
        return classify_connect_error(text, target, target.dbname)
    lines = [line for line in text.splitlines() if line.strip()]
    detail = "; ".join(lines[-3:]) if lines else "no message"
    return DatabaseError(f"pg_dump failed: {detail}")


def table_fingerprints(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """Rows and an order-independent content hash per table: what a round trip must preserve."""
    from psycopg import sql

    result: dict[str, tuple[int, str]] = {}
    for schema, name in user_tables(conn):
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '')"
            " FROM {}.{} t"
        ).format(sql.Identifier(schema), sql.Identifier(name))
        row = conn.execute(query).fetchone()
        assert row is not None
        result[f"{schema}.{name}"] = (int(row[0]), str(row[1]))
    return result


def sequence_values(conn: psycopg.Connection[Any]) -> dict[str, int | None]:
    rows = conn.execute(
        "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences ORDER BY 1"
    ).fetchall()
    return {str(name): (int(value) if value is not None else None) for name, value in rows}
