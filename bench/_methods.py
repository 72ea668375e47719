"""The operations being timed, each one whole, the way an operator would run it.

Every method returns a ``Sample``: wall seconds (``time.perf_counter`` around the complete
operation), the bytes it wrote (backups), and details worth keeping (phase timings...).
Before each timing the server is checkpointed and the OS page cache flushed to disk
(``settle``), so one operation's dirty pages are not written during the next one's clock.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from safehold import BackupOptions, LocalStorage, RestoreOptions, backup_database, restore_database
from safehold.sources.postgres import PgTarget, connect, count_rows

ROOT = Path(__file__).resolve().parent.parent
SAFEHOLD_CLI = ROOT / ".venv" / "bin" / "safehold"


@dataclass
class Sample:
    seconds: float
    size: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "size": self.size, "detail": self.detail}


@dataclass(frozen=True)
class Bench:
    """Where the benchmark runs: the server (``server.dbname`` is the maintenance db)."""

    server: PgTarget  # bin_dir set: safehold and the baselines use the very same binaries
    bin_dir: Path
    work: Path
    jobs: int

    def db(self, name: str) -> PgTarget:
        return self.server.with_db(name)

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def conn_args(self) -> list[str]:
        return ["-h", self.server.host, "-p", str(self.server.port), "-U", self.server.user]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SAFEHOLD_"))}
        env["PGPASSWORD"] = self.server.password or ""
        return env


def settle(bench: Bench) -> None:
    with connect(bench.server, "postgres", autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


@contextlib.contextmanager
def clock() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def _run(argv: list[str], bench: Bench, **kwargs: Any) -> None:
    proc = subprocess.run(argv, env=bench.env(), capture_output=True, check=False, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err}")


# --- backups ------------------------------------------------------------------------------


def pg_dump(bench: Bench, dbname: str, out: Path, level: int | None = None) -> Sample:
    """``pg_dump -Fc [-Z level] -f FILE dbname`` (pg_dump fsyncs its file, as safehold does)."""
    argv = [bench.tool("pg_dump"), "-Fc", "-f", str(out), *bench.conn_args()]
    if level is not None:
        argv.insert(2, f"-Z{level}")
    settle(bench)
    with clock() as took:
        _run([*argv, dbname], bench)
    return Sample(took[0], out.stat().st_size)


def pg_dump_zstd_pipe(bench: Bench, dbname: str, out: Path) -> Sample:
    """``pg_dump -Fc -Z0 | zstd -3 -T<jobs>``: the same work as safehold's zstd path, in C."""
    dump = [bench.tool("pg_dump"), "-Fc", "-Z0", *bench.conn_args(), dbname]
    zstd = ["zstd", "-q", "-f", "-3", f"-T{bench.jobs}", "-o", str(out)]
    settle(bench)
    with clock() as took:
        producer = subprocess.Popen(dump, env=bench.env(), stdout=subprocess.PIPE)
        assert producer.stdout is not None
        consumer = subprocess.run(zstd, stdin=producer.stdout, check=False)
        producer.stdout.close()
        if producer.wait() != 0 or consumer.returncode != 0:
            raise RuntimeError("pg_dump | zstd failed")
        with out.open("rb") as fh:
            os.fsync(fh.fileno())
    return Sample(took[0], out.stat().st_size)


def safehold_backup(bench: Bench, dbname: str, repo: Path, compression: str) -> Sample:
    """The public API: ``backup_database(target, LocalStorage(repo), BackupOptions(...))``."""
    options = BackupOptions(compression="zstd" if compression == "zstd" else "gzip")
    settle(bench)
    with clock() as took:
        manifest = backup_database(bench.db(dbname), LocalStorage(repo), options)
    return Sample(
        took[0],
        manifest.size,
        {"artifact": manifest.artifact, "dump_bytes": manifest.facts.get("dump_bytes")},
    )


def safehold_cli_backup(bench: Bench, dbname: str, repo: Path) -> Sample:
    """``safehold backup`` as a user runs it: a new Python process, config from flags/env."""
    argv = [str(SAFEHOLD_CLI), "backup", "-q", "--backup-dir", str(repo), "--db-name", dbname]
    argv += ["--db-host", bench.server.host, "--db-port", str(bench.server.port)]
    argv += ["--db-user", bench.server.user, "--compress", "gzip"]
    env = bench.env() | {"SAFEHOLD_DATABASE_PG_BIN_DIR": str(bench.bin_dir)}
    settle(bench)
    with clock() as took:
        proc = subprocess.run(argv, env=env, cwd=bench.work, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"safehold backup failed: {proc.stderr.decode(errors='replace')}")
    artifact = Path(proc.stdout.decode().strip().splitlines()[-1])
    return Sample(took[0], artifact.stat().st_size, {"artifact": artifact.name})


def count_all_rows(bench: Bench, dbname: str) -> Sample:
    """What safehold's backup runs beside pg_dump: count(*) of every table, one session."""
    settle(bench)
    with clock() as took, connect(bench.db(dbname), autocommit=True) as conn:
        counts = count_rows(conn)
    return Sample(took[0], None, {"rows": sum(counts.values())})


# --- restores -----------------------------------------------------------------------------


def pg_restore(bench: Bench, archive: Path, newdb: str) -> Sample:
    """``createdb NEW && pg_restore -j N -d NEW FILE``; the clock includes createdb."""
    settle(bench)
    with clock() as took:
        with clock() as created:
            _run([bench.tool("createdb"), *bench.conn_args(), newdb], bench)
        restore = [bench.tool("pg_restore"), f"-j{bench.jobs}", "--exit-on-error"]
        _run([*restore, *bench.conn_args(), "-d", newdb, str(archive)], bench)
    return Sample(took[0], None, {"createdb_s": round(created[0], 3)})


def safehold_restore(bench: Bench, repo: Path, artifact: str, newdb: str) -> Sample:
    """``restore_database(..., RestoreOptions(target_db=NEW, jobs=N))``: verify, staging, rename."""
    options = RestoreOptions(target_db=newdb, jobs=bench.jobs)
    settle(bench)
    with clock() as took:
        result = restore_database(bench.server, LocalStorage(repo), artifact, options)
    phases = {k: round(v, 3) for k, v in result.timings.items()}
    return Sample(took[0], None, {"phases_s": phases, "rows": sum(result.tables.values())})


def safehold_swap_restore(bench: Bench, repo: Path, artifact: str, live: str) -> Sample:
    """Restore over an existing database that has an idle session open (the swap path).

    The replaced database is kept (the default); it is dropped afterwards, off the clock.
    """
    options = RestoreOptions(target_db=live, jobs=bench.jobs)
    settle(bench)
    app = connect(bench.db(live), autocommit=True)  # an application's idle connection
    try:
        with clock() as took:
            result = restore_database(bench.server, LocalStorage(repo), artifact, options)
    finally:
        with contextlib.suppress(psycopg.Error):
            app.close()
    phases = {k: round(v, 3) for k, v in result.timings.items()}
    previous = result.plan.previous
    if previous:
        drop_databases(bench, [previous])
    return Sample(took[0], None, {"phases_s": phases, "previous": previous})


def drop_databases(bench: Bench, names: list[str]) -> None:
    with connect(bench.server, "postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def databases_like(bench: Bench, prefix: str) -> list[str]:
    with connect(bench.server, "postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
        ).fetchall()
    return [str(row[0]) for row in rows]
