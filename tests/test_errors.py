"""Every bad input: a clear error and hint, a specific exit code, and nothing half-written.

Each case runs the real ``safehold`` command against the real test cluster. After a failure the
repository holds only the good backups taken before it (their sha256 still matching their
manifests), no temp file, and the live database has exactly the content it had before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from safehold import catalog, naming
from safehold.sandbox import SandboxCluster, load_sample
from safehold.sandbox.cluster import free_port
from safehold.sources.pg_admin import db_name_with_suffix
from safehold.sources.postgres import PgTarget, connect, count_rows
from safehold.storage import LocalStorage

from .conftest import (
    SAMPLE_USERS,
    CliRunner,
    databases,
    drop_databases,
    execute,
    fingerprint,
    seed_env,
)

# ----------------------------------------------------- helpers

# "error: ..." / "hint: ..." at the start of a line, or after a log line's time and level.
ERROR_LINE = re.compile(r"(^|\s)error: \S")
HINT_LINE = re.compile(r"(^|\s)hint: \S")


def fails(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The shape of every failure: the exit code, an ``error:`` and a ``hint:`` line, no trace."""
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    lines = result.stderr.splitlines()
    assert any(ERROR_LINE.search(line) for line in lines), result.stderr
    assert any(HINT_LINE.search(line) for line in lines), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if ERROR_LINE.search(line))


def hint_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if HINT_LINE.search(line))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def good_backup(run_cli: CliRunner, env: dict[str, str] | None = None) -> str:
    """Take a backup through the CLI and return its artifact name."""
    result = ok(run_cli("backup", "--json", env=env))
    name = json.loads(result.stdout)["artifact"]
    assert isinstance(name, str)
    return name


def files_under(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() or path.is_symlink()
    }


def assert_intact(root: Path, name: str) -> None:
    """The artifact still has the size and sha256 its manifest recorded."""
    manifest = json.loads((root / naming.manifest_key(name)).read_text())
    data = (root / name).read_bytes()
    assert len(data) == manifest["size"]
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]


def assert_nothing_half_written(root: Path, good: Iterable[str] = ()) -> None:
    """Only the earlier good backups (with manifests and latest links) and the lock file."""
    kept = set(good)
    for name in list(kept):  # a dump's globals are written with it
        kept.update(catalog.companions(catalog.read_manifest(LocalStorage(root), name)))
    allowed = {naming.LOCK_FILE, *kept, *(naming.manifest_key(name) for name in kept)}
    if kept:
        allowed |= set(naming.DB_LATEST_LINKS)
    found = files_under(root)
    found = {f for f in found if not f.startswith(".safehold/runs/")}  # the runs' own account
    assert not [f for f in found if ".partial-" in f], f"temp files left: {sorted(found)}"
    assert found <= allowed, f"unexpected files in the repository: {sorted(found - allowed)}"
    assert kept <= found
    for name in kept:
        assert_intact(root, name)


def assert_no_restore_leftovers(db: PgTarget, live: str | None = None) -> None:
    """The live database is still there under its name and no staging/previous copy exists."""
    live = live or db.dbname
    names = databases(db)
    assert live in names
    # The names a restore of ``live`` would use, cut to the identifier limit as it cuts them.
    example_stamp = "_20240101_000000"
    patterns = [
        re.escape(db_name_with_suffix(live, mark + example_stamp)[: -len(example_stamp)])
        + r"_\d{8}_\d{6}"
        for mark in ("_safehold_staging", "_pre_restore")
    ]
    left = [n for n in names if any(re.fullmatch(p, n) for p in patterns)]
    assert not left, f"restore leftovers: {left}"


def mutate(target: PgTarget) -> None:
    execute(target, "DELETE FROM app.files WHERE id % 2 = 0")
    execute(target, "UPDATE app.users SET display = 'changed' WHERE id < 10")
    execute(target, "SELECT nextval('app.invoice_no')")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def partials(root: Path) -> list[Path]:
    return sorted(root.glob(".db_backup_*.partial-*"))


def start_backup(db: PgTarget, repo: LocalStorage, log: Path) -> subprocess.Popen[bytes]:
    """A backup in the background, like cron would start it; output goes to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "safehold", "backup"],
            env=seed_env(db, repo.root),
            cwd=repo.root.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def server_major(db: PgTarget) -> int:
    with connect(db, autocommit=True) as conn:
        return conn.info.server_version // 10000


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Folders on small tmpfs mounts (or, without root, read-only by mode); undone afterwards."""
    made: list[Path] = []
    chmodded: list[Path] = []

    def mount(size: str = "1m", *, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(made) + len(chmodded)}"
        point.mkdir()
        if os.geteuid() != 0:
            # Without root there is no mount; DAC applies, so mode 0500 makes it read-only.
            assert read_only, "a size-limited folder needs root (tmpfs mount)"
            point.chmod(0o500)
            chmodded.append(point)
            return point
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            check=True,
            capture_output=True,
        )
        made.append(point)
        return point

    yield mount
    for point in reversed(made):
        subprocess.run(["umount", str(point)], check=False, capture_output=True)
    for point in chmodded:
        point.chmod(0o700)


# ------------------------------------------- database problems


def test_server_unreachable(run_cli: CliRunner, repo: LocalStorage, db: PgTarget) -> None:
    before = fingerprint(db)
    result = run_cli("backup", env={"DB_PORT": str(free_port())})

    stderr = fails(result, 3)
    assert "DB_HOST/DB_PORT" in stderr
    assert_nothing_half_written(repo.root)
    assert fingerprint(db) == before


def test_server_unreachable_json(run_cli: CliRunner, repo: LocalStorage) -> None:
    result = run_cli("backup", "--json", env={"DB_PORT": str(free_port())})

    fails(result, 3)
    report = json.loads(result.stdout)
    assert "cannot reach" in report["error"]
    assert "DB_HOST/DB_PORT" in report["hint"]
    assert_nothing_half_written(repo.root)


def test_wrong_password_is_rejected_and_never_shown(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget
) -> None:
    earlier = good_backup(run_cli)
    before = fingerprint(db)
    wrong = "wrong-" + secrets.token_hex(8)

    result = run_cli("backup", env={"PGPASSWORD": wrong})

    stderr = fails(result, 3)
    assert "credentials" in stderr
    assert wrong not in result.stdout + result.stderr
    assert_nothing_half_written(repo.root, [earlier])

    restore = run_cli("restore", "--database", "latest", env={"PGPASSWORD": wrong})

    fails(restore, 3)
    assert wrong not in restore.stdout + restore.stderr
    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)


def test_password_never_shown_on_success(run_cli: CliRunner, db: PgTarget) -> None:
    assert db.password
    for args in (
        ("backup",),
        ("backup", "--json", "--log-format", "json"),
        ("list", "--json"),
        ("restore", "--database", "latest", "--drop-previous"),
    ):
        result = ok(run_cli(*args))
        assert db.password not in result.stdout + result.stderr


def test_missing_database(run_cli: CliRunner, repo: LocalStorage, db: PgTarget) -> None:
    result = run_cli("backup", env={"DB_NAME": "doesnotexist"})

    stderr = fails(result, 3)
    assert "doesnotexist" in stderr and "does not exist" in stderr
    assert_nothing_half_written(repo.root)
    assert "doesnotexist" not in databases(db)


# ------------------------------------------------------- tools


def test_pg_dump_missing(run_cli: CliRunner, repo: LocalStorage, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_cli("backup", env={"SAFEHOLD_DATABASE_PG_BIN_DIR": str(empty)})

    stderr = fails(result, 4)
    assert "pg_dump" in stderr and str(empty) in stderr
    assert_nothing_half_written(repo.root)


def test_pg_dump_older_than_server(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget, tmp_path: Path
) -> None:
    # The one stand-in in this file: a script that only answers --version like an old pg_dump,
    # to check the version gate. It must never be asked to dump (exit 99 if it is).
    bin_dir = tmp_path / "old-bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 12.22"; exit 0; fi\n'
        'echo "stand-in pg_dump must not dump" >&2\nexit 99\n'
    )
    fake.chmod(0o755)
    earlier = good_backup(run_cli)

    result = run_cli("backup", env={"SAFEHOLD_DATABASE_PG_BIN_DIR": str(bin_dir)})

    stderr = fails(result, 4)
    major = server_major(db)
    hint = hint_line(stderr)
    assert str(major) in hint
    assert "12" in stderr and "older" in stderr
    assert "must not dump" not in stderr
    assert_nothing_half_written(repo.root, [earlier])


# ----------------------------------------------------- storage


def test_backup_dir_not_writable(
    run_cli: CliRunner, db: PgTarget, mounts: Callable[..., Path]
) -> None:
    read_only = mounts("1m", read_only=True)
    result = run_cli("backup", env={"BACKUP_DIR": str(read_only)})

    stderr = fails(result, 5)
    assert str(read_only) in stderr
    assert files_under(read_only) == set()


def test_disk_full_mid_backup(
    run_cli: CliRunner, db: PgTarget, mounts: Callable[..., Path]
) -> None:
    small = mounts("512k")
    env = {"BACKUP_DIR": str(small)}
    earlier = good_backup(run_cli, env)  # the sample database still fits
    # ~3 MiB of random bytes: neither the TOAST nor the pg_dump compression can shrink it.
    execute(
        db,
        "CREATE TABLE public.noise AS SELECT g AS id, "
        "decode(string_agg(md5(random()::text || g::text), '') , 'hex') AS blob "
        "FROM generate_series(1, 2000) g, generate_series(1, 100) h GROUP BY g",
    )
    before = fingerprint(db)

    result = run_cli("backup", env=env)

    stderr = fails(result, 5)
    assert "no space" in stderr.lower()
    assert_nothing_half_written(small, [earlier])
    assert fingerprint(db) == before
    # The space the failed run took is free again: a backup that fits still succeeds there.
    execute(db, "DROP TABLE public.noise")
    fitting = good_backup(run_cli, env)
    assert_nothing_half_written(small, [earlier, fitting])


# ------------------------------------ damaged or foreign files


@pytest.mark.parametrize("where", ["repository", "copied-outside"])
def test_truncated_backup(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget, tmp_path: Path, where: str
) -> None:
    name = good_backup(run_cli)
    data = repo.path(name).read_bytes()
    if where == "repository":
        path = repo.path(name)
    else:  # copied off-site without its manifest: only the dump itself can tell it is cut
        (tmp_path / "offsite").mkdir()
        path = tmp_path / "offsite" / name
    mutate(db)
    before = fingerprint(db)
    path.write_bytes(data[:-100])

    result = run_cli("restore", "--database", str(path))

    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)
    stderr = fails(result, 6)
    assert "damaged" in stderr or "truncated" in stderr


def test_one_flipped_byte(run_cli: CliRunner, repo: LocalStorage, db: PgTarget) -> None:
    name = good_backup(run_cli)
    path = repo.path(name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    mutate(db)
    before = fingerprint(db)

    result = run_cli("restore", "--database", name)

    stderr = fails(result, 6)
    assert "is damaged: blake3" in stderr  # the checksum a restore checks before any SQL
    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)


@pytest.mark.parametrize("where", ["outside", "inside"])
@pytest.mark.parametrize("content", ["random", "sql-text"])
def test_file_that_is_not_a_dump(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget, tmp_path: Path, where: str, content: str
) -> None:
    earlier = good_backup(run_cli)
    folder = repo.root if where == "inside" else tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    path = folder / "db_backup_20240101_000000.sql"
    if content == "random":
        path.write_bytes(secrets.token_bytes(64 * 1024))
    else:
        path.write_text(
            "-- PostgreSQL database dump\nCREATE TABLE app.users (id int);\nDROP SCHEMA app;\n"
        )
    mutate(db)
    before = fingerprint(db)

    result = run_cli("restore", "--database", str(path))

    if content == "random":
        assert "is binary data, not a PostgreSQL dump" in fails(result, 6)
    else:  # plain SQL is a dump format: run by psql into staging, where it fails
        assert "psql failed" in fails(result, 7)
    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)
    if where == "inside":
        path.unlink()
    assert_nothing_half_written(repo.root, [earlier])


def test_valid_dump_without_manifest_is_accepted_with_a_warning(
    run_cli: CliRunner, db: PgTarget, tmp_path: Path
) -> None:
    at_dump = fingerprint(db)
    outside = tmp_path / "by-hand"
    outside.mkdir()
    dump = outside / "manual.dump"
    env = {**os.environ, "PGPASSWORD": db.password or ""}
    connection = ["-h", db.host, "-p", str(db.port), "-U", db.user, "--dbname", db.dbname]
    subprocess.run(
        ["pg_dump", "-Fc", *connection, "-f", str(dump)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    mutate(db)
    changed = fingerprint(db)
    assert changed != at_dump

    result = ok(run_cli("restore", "--database", str(dump)))

    assert "no manifest" in result.stderr
    assert "warning" in result.stderr.lower()
    assert fingerprint(db) == at_dump
    previous = [n for n in databases(db) if n.startswith(db.dbname + "_pre_restore_")]
    assert len(previous) == 1
    assert fingerprint(db, previous[0]) == changed


def test_manifest_row_counts_do_not_match(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget
) -> None:
    name = good_backup(run_cli)
    manifest_path = repo.path(naming.manifest_key(name))
    manifest = json.loads(manifest_path.read_text())
    manifest["facts"]["tables"]["app.users"] += 1  # the artifact and its sha256 stay as they are
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    mutate(db)
    before = fingerprint(db)

    result = run_cli("restore", "--database", "latest")

    stderr = fails(result, 6)
    assert "does not match the manifest" in stderr
    assert "app.users" in stderr
    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)


# --------------------------------------- restore target in use


@pytest.fixture
def owned_db(pg: SandboxCluster, db: PgTarget) -> Iterator[PgTarget]:
    """A copy of the sample app in a database owned (with all its objects) by a plain role."""
    role = f"owner_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    with connect(pg.target, "postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    owner = PgTarget(db.host, db.port, f"{db.dbname}_own", role, password)
    try:
        load_sample(owner, owner.dbname, users=SAMPLE_USERS)  # created by the role: it owns it
        yield owner
    finally:
        drop_databases(pg.target, db.dbname)  # the copy and any restore leftovers of it
        with connect(pg.target, "postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_restore_target_in_use_by_a_session_the_user_may_not_end(
    run_cli: CliRunner, repo: LocalStorage, pg: SandboxCluster, owned_db: PgTarget
) -> None:
    env = {
        "DB_USER": owned_db.user,
        "PGPASSWORD": owned_db.password or "",
        "DB_NAME": owned_db.dbname,
    }
    at_backup = fingerprint(pg.target, owned_db.dbname)
    earlier = good_backup(run_cli, env)
    execute(owned_db, "DELETE FROM public.audit_log WHERE id % 2 = 0")
    before = fingerprint(pg.target, owned_db.dbname)

    # A superuser stays connected: the owner (not a superuser) may not terminate that session.
    with connect(pg.target, owned_db.dbname, autocommit=True) as held:
        result = run_cli("restore", "--database", "latest", env=env)
        row = held.execute("SELECT current_database()").fetchone()
        assert row is not None and row[0] == owned_db.dbname  # the session was not ended

    stderr = fails(result, 7)
    error = error_line(stderr)
    assert owned_db.dbname in error
    assert_no_restore_leftovers(pg.target, owned_db.dbname)
    assert fingerprint(pg.target, owned_db.dbname) == before
    with connect(pg.target, "postgres", autocommit=True) as conn:
        allow = conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (owned_db.dbname,)
        ).fetchone()
    assert allow == (True,), "the live database must accept connections again"
    assert_intact(repo.root, earlier)
    # The control: with the superuser session gone, the same restore as the same role works.
    ok(run_cli("restore", "--database", "latest", "--drop-previous", env=env))
    assert fingerprint(pg.target, owned_db.dbname) == at_backup != before
    assert "in use" in error, f"the message should say the database is in use: {error!r}"


# ------------------------------------- crashes and concurrency


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the direct children of ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found.append((int(entry.name), name))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # exited, waiting to be reaped by init


def listed(run_cli: CliRunner, kind: str = "database") -> list[dict[str, Any]]:
    """The listed records of one kind (a dump's globals are listed beside it)."""
    records = json.loads(ok(run_cli("list", "--json")).stdout)
    assert isinstance(records, list)
    return [r for r in records if r["kind"] == kind]


def test_kill_9_mid_backup(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget, tmp_path: Path
) -> None:
    earlier = good_backup(run_cli)
    # Enough rows that the dump takes a couple of seconds.
    execute(
        db,
        "CREATE TABLE public.bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload"
        " FROM generate_series(1, 400000) g",
    )
    proc = start_backup(db, repo, tmp_path / "killed.log")
    try:
        wait_for(
            lambda: any(p.stat().st_size > 0 for p in partials(repo.root)),
            30,
            "the backup to start writing its temp file",
        )
        dumps = [pid for pid, name in _children(proc.pid) if name == "pg_dump"]
        assert len(dumps) == 1, _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # only the safehold process
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: _gone(dumps[0]), 15, "the orphaned pg_dump to die of SIGPIPE")
    left = partials(repo.root)
    assert left and str(proc.pid) in left[0].name  # what a kill -9 leaves behind

    records = listed(run_cli)
    assert [r["name"] for r in records] == [earlier]
    assert records[0]["status"] == "ok"
    # The killed run's globals are written after its dump: none of them is left either.
    assert [r["name"] for r in listed(run_cli, "globals")] == [naming.globals_artifact(earlier)]
    assert_intact(repo.root, earlier)

    result = ok(run_cli("backup", "--json"))
    assert f"pid {proc.pid}" in result.stderr and "died" in result.stderr
    assert "removed unfinished file" in result.stderr and left[0].name in result.stderr
    assert partials(repo.root) == []
    fresh = json.loads(result.stdout)["artifact"]
    assert fresh != earlier
    assert_nothing_half_written(repo.root, [earlier, fresh])
    manifest = json.loads(repo.path(naming.manifest_key(fresh)).read_text())
    with connect(db, autocommit=True) as conn:
        assert manifest["facts"]["tables"] == count_rows(conn)
    assert manifest["facts"]["tables"]["public.bulk"] == 400000
    assert {r["name"] for r in listed(run_cli)} == {earlier, fresh}


def test_concurrent_backup_fails_fast_naming_the_holder(
    run_cli: CliRunner, repo: LocalStorage, db: PgTarget, tmp_path: Path
) -> None:
    at_start = fingerprint(db)
    # Holding a table lock keeps the first backup's pg_dump waiting (it needs ACCESS SHARE on
    # every table): the first run holds the repository lock for exactly as long as we want.
    blocker = psycopg.connect(
        host=db.host, port=db.port, dbname=db.dbname, user=db.user, password=db.password
    )
    first: subprocess.Popen[bytes] | None = None
    try:
        blocker.execute("LOCK TABLE app.users IN ACCESS EXCLUSIVE MODE")
        first = start_backup(db, repo, tmp_path / "first.log")
        wait_for(lambda: bool(partials(repo.root)), 30, "the first backup to start")

        second = run_cli("backup", "--lock-timeout", "0")

        stderr = fails(second, 8)
        assert f"pid {first.pid}" in stderr
        assert "locked" in stderr
        blocker.rollback()
        assert first.wait(timeout=60) == 0, (tmp_path / "first.log").read_text()
    finally:
        blocker.close()
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()

    third = ok(run_cli("backup", "--json"))
    names = [r["name"] for r in listed(run_cli)]
    assert len(names) == 2 and len(set(names)) == 2
    assert json.loads(third.stdout)["artifact"] in names
    assert_nothing_half_written(repo.root, names)
    for name in names:
        manifest = json.loads(repo.path(naming.manifest_key(name)).read_text())
        assert manifest["facts"]["tables"] == {t: rows for t, (rows, _) in at_start[0].items()}
    listing = subprocess.run(
        ["pg_restore", "--list", str(repo.path(names[0]))], capture_output=True, text=True
    )
    assert listing.returncode == 0 and "TABLE DATA app users" in listing.stdout


# ------------------------------------- configuration and usage


def test_config_with_a_mistyped_key(run_cli: CliRunner, repo: LocalStorage, tmp_path: Path) -> None:
    config = tmp_path / "safehold.toml"
    config.write_text('[database]\nhots = "x"\n')

    result = run_cli("backup", "--config", str(config))

    stderr = fails(result, 2)
    error = error_line(stderr)
    assert str(config) in error and "hots" in error
    assert "did you mean 'database.host'" in stderr
    assert not repo.root.exists()


@pytest.mark.parametrize("env_port", ["unset", "set"])
def test_config_with_a_wrong_type(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, env_port: str
) -> None:
    config = tmp_path / "safehold.toml"
    config.write_text('[database]\nport = "abc"\n')
    # "set": DB_PORT in the environment (as run_cli sets it) must not hide the broken file.
    env = {"DB_PORT": ""} if env_port == "unset" else {}

    result = run_cli("backup", "--config", str(config), env=env)

    stderr = fails(result, 2)
    assert str(config) in stderr and "port" in stderr and "abc" in stderr
    assert "whole number" in stderr
    assert not repo.root.exists()


def test_restore_without_database(run_cli: CliRunner, db: PgTarget) -> None:
    before = fingerprint(db)
    result = run_cli("restore")

    stderr = fails(result, 2)
    assert "--database" in stderr
    assert fingerprint(db) == before


def test_restore_unknown_name(run_cli: CliRunner, repo: LocalStorage, db: PgTarget) -> None:
    earlier = good_backup(run_cli)
    before = fingerprint(db)

    result = run_cli("restore", "--database", "nosuchname", "--json")

    stderr = fails(result, 2)
    assert "nosuchname" in stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"error", "hint"} and "nosuchname" in report["error"]
    assert fingerprint(db) == before
    assert_no_restore_leftovers(db)
    assert_nothing_half_written(repo.root, [earlier])
