"""``safehold doctor``'s checks of what breaks in practice, each planted for real: a role without
CREATEDB/CREATEROLE, a database closed to connections, an archiver that fails, an archive_command
the server's OS user cannot run (program, repository, log and key file at once), S3 locations
with wrong credentials, no server, a held lock and an unfinished upload, leftovers of killed runs,
and a full data folder; then each one healthy again.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from safehold.operations.pitr import setup as pitr_setup
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER, free_port
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage
from safehold.storage.s3_lock import S3Lock

from .conftest import CliRunner
from .pitr_support import AS_ROOT, give_to_server, server_command, shared_folder, switch_and_wait
from .test_doctor import backup, doctor
from .test_restore_rights import admin_sql, as_role
from .test_restore_rights import role as role  # a fixture


def execute(target: PgTarget, statement: str | sql.Composed) -> None:
    with connect(target, "postgres", autocommit=True) as conn:
        conn.execute(statement)


# ------------------------------------------------------------------ rights


def test_role_without_createdb_or_createrole(
    run_cli: CliRunner, db: PgTarget, pg: SandboxCluster, role: tuple[str, str]
) -> None:
    report = doctor(run_cli, db, 1, env=as_role(role))

    assert report["restore rights"]["result"] == "FAIL"
    assert f"role {role[0]!r} lacks the CREATEDB privilege" in report["restore rights"]["detail"]
    roles = report["roles"]
    assert roles["result"] == "WARN"
    assert f"role {role[0]!r} lacks CREATEROLE" in roles["detail"]
    assert (
        roles["fix"]
        == f"as a superuser: ALTER ROLE {role[0]} CREATEROLE; or restore as a superuser"
    )

    name = sql.Identifier(role[0])
    admin_sql(pg, sql.SQL("ALTER ROLE {} CREATEDB CREATEROLE").format(name))
    admin_sql(pg, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db.dbname), name))
    healed = doctor(run_cli, db, 0, env=as_role(role))
    assert healed["restore rights"]["result"] == "OK"
    assert healed["roles"]["result"] == "SKIP"  # no backup here to compare with, and it may create


# ------------------------------------------------------------------ the database


def test_database_that_refuses_connections(run_cli: CliRunner, db: PgTarget) -> None:
    execute(
        db, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db.dbname))
    )
    try:
        report = doctor(run_cli, db, 1)
    finally:
        execute(
            db,
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db.dbname)),
        )

    assert report["database server"]["result"] == "OK"  # not "server down"
    assert "PostgreSQL" in report["database server"]["detail"]
    assert report["database login"]["result"] == "OK"
    database = report["database"]
    assert database["result"] == "FAIL"
    assert database["detail"] == (
        f"database {db.dbname!r} exists but does not accept connections: ALLOW_CONNECTIONS is false"
    )
    assert database["fix"].endswith(f"ALTER DATABASE {db.dbname} ALLOW_CONNECTIONS true")
    assert doctor(run_cli, db, 0)["database"]["result"] == "OK"


# ------------------------------------------------------------------ the repository


def test_folders_safehold_created_are_not_warned(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage
) -> None:
    backup(run_cli)
    old = os.umask(0o022)
    try:
        repo.put_bytes(".safehold/pitr/deep/record.json", b"{}")
    finally:
        os.umask(old)
    assert (repo.root / ".safehold/pitr").stat().st_mode & 0o777 == 0o700
    assert doctor(run_cli, db, 0)["backup folder"]["result"] == "OK"
    # Folders an older safehold made with the umask's mode: their read bits show names only.
    (repo.root / ".safehold/pitr").chmod(0o755)
    assert doctor(run_cli, db, 0)["backup folder"]["result"] == "OK"

    (repo.root / ".safehold/pitr").chmod(0o757)  # others may replace what is in it
    folder = doctor(run_cli, db, 0)["backup folder"]
    assert folder["result"] == "WARN"
    assert f"{repo.root / '.safehold/pitr'} (0757)" in folder["detail"]


def test_leftovers_of_killed_runs(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, pg: SandboxCluster
) -> None:
    name = backup(run_cli)
    dead = subprocess.Popen(["true"])
    dead.wait()
    torn = [
        repo.root / f".{name}.partial-{dead.pid}-0a1b2c3d",
        repo.root / f".safehold/manifests/.{name}.json.partial-{dead.pid}-00ff00ff",
    ]
    for path in torn:
        path.write_bytes(b"x" * 1000)
    staging = f"{db.dbname}_safehold_staging_20240101_000000"
    execute(pg.target, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(staging)))

    report = doctor(run_cli, db, 0)

    files = report["unfinished files"]
    assert files["result"] == "WARN"
    assert files["detail"].startswith("2 temp file(s) of writes whose process is gone (2.0 KiB): ")
    for path in torn:
        assert str(path.relative_to(repo.root)) in files["detail"]
    leftover = report["leftover databases"]
    assert leftover["result"] == "WARN"
    assert staging in leftover["detail"]
    assert f"DROP DATABASE {staging}" in leftover["fix"]

    for path in torn:
        path.unlink()
    execute(pg.target, sql.SQL("DROP DATABASE {}").format(sql.Identifier(staging)))
    healed = doctor(run_cli, db, 0)
    assert healed["unfinished files"]["result"] == "OK"
    assert healed["leftover databases"]["result"] == "OK"


# ------------------------------------------------------------------ S3 locations


def location_env(s3: SandboxS3, tmp_path: Path, bucket: str, endpoint: str = "") -> dict[str, str]:
    config = tmp_path / f"safehold-{secrets.token_hex(3)}.toml"
    config.write_text(
        f'[locations.offsite]\nendpoint = "{endpoint or s3.endpoint}"\nbucket = "{bucket}"\n'
        'prefix = "host-a"\nmax_attempts = 1\n'
    )
    return {
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_s3_location(run_cli: CliRunner, db: PgTarget, s3: SandboxS3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    env = location_env(s3, tmp_path, bucket)

    healthy = doctor(run_cli, db, 0, env=env)
    assert healthy["location offsite"]["result"] == "OK"
    assert f"s3://{bucket}/host-a" in healthy["location offsite"]["detail"]
    assert "wrote, read back and removed" in healthy["location offsite"]["detail"]
    assert healthy["location offsite lock"] == {
        "check": "location offsite lock",
        "result": "OK",
        "detail": f"took and released the repository lock on s3://{bucket}/host-a",
        "fix": None,
    }
    assert healthy["location offsite uploads"]["result"] == "OK"
    storage = s3.storage(bucket, "host-a")
    assert storage.list("") == []  # the probe and the lock are gone

    wrong = doctor(
        run_cli, db, 1, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong-" + secrets.token_hex(8)}
    )
    assert wrong["location offsite"]["result"] == "FAIL"
    assert "SignatureDoesNotMatch" in wrong["location offsite"]["detail"] or "credentials" in (
        wrong["location offsite"]["detail"] + wrong["location offsite"]["fix"]
    )
    assert "location offsite lock" not in wrong

    down = location_env(s3, tmp_path, bucket, endpoint=f"http://127.0.0.1:{free_port()}")
    unreachable = doctor(run_cli, db, 1, env=down)
    assert unreachable["location offsite"]["result"] == "FAIL"
    assert "127.0.0.1" in unreachable["location offsite"]["detail"]

    lock = S3Lock(storage, purpose="safehold backup", heartbeat=False)
    upload = storage.client.create_multipart_upload(Bucket=bucket, Key="host-a/db_backup_x.sql")
    with lock.hold(timeout=5):
        busy = doctor(run_cli, db, 0, env=env)
    storage.client.abort_multipart_upload(
        Bucket=bucket, Key="host-a/db_backup_x.sql", UploadId=upload["UploadId"]
    )
    held = busy["location offsite lock"]
    assert held["result"] == "WARN"
    assert (
        f"is locked by pid {os.getpid()}" in held["detail"]
        and "(safehold backup)" in held["detail"]
    )
    uploads = busy["location offsite uploads"]
    assert uploads["result"] == "WARN"
    assert (
        "1 unfinished multipart upload(s)" in uploads["detail"]
        and "db_backup_x.sql" in uploads["detail"]
    )
    assert "safehold prune" in uploads["fix"]


# ------------------------------------------------------------------ WAL archiving


@pytest.fixture(scope="module")
def archiving() -> Iterator[SandboxCluster]:
    """A cluster of its own with archive_mode on and an archive_command that always fails."""
    if not AS_ROOT:
        pytest.fail("the server must run as another OS user: run the tests as root", pytrace=False)
    cluster = SandboxCluster()
    cluster.start()
    try:
        settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": "false"}
        pitr_setup.apply_settings(cluster.target, settings)
        log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", log, "-m", "fast", "-w", "restart")
        yield cluster
    finally:
        cluster.remove()


def on(cluster: SandboxCluster) -> dict[str, str]:
    return {"DB_PORT": str(cluster.port), "DB_NAME": "postgres", "PGPASSWORD": cluster.password}


def wait_for_failure(cluster: SandboxCluster) -> None:
    execute(cluster.target, "SELECT pg_switch_wal()")
    execute(cluster.target, "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
    execute(cluster.target, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connect(cluster.target, "postgres", autocommit=True) as conn:
            row = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
        if row and row[0]:
            return
        time.sleep(0.2)
    raise AssertionError("the archiver never failed")


def test_wal_archiving(
    run_cli: CliRunner, db: PgTarget, archiving: SandboxCluster, tmp_path: Path
) -> None:
    wait_for_failure(archiving)
    failing = doctor(run_cli, db, 1, env=on(archiving))
    archiver = failing["wal archiver"]
    assert archiver["result"] == "FAIL"
    assert archiver["detail"].startswith("archiving is failing: ")
    assert "failed attempt(s), the last for 0000000100000000000000" in archiver["detail"]
    assert "archive command failed" in archiver["fix"]
    access = failing["archive_command access"]
    assert access == {
        "check": "archive_command access",
        "result": "SKIP",
        "detail": "archive_command does not run safehold wal-push ('false'): not checked",
        "fix": None,
    }

    # Three things the server's user cannot reach, planted at once: doctor names them together.
    hidden = Path(tempfile.mkdtemp(prefix="safehold-hidden-"))  # 0700, root's
    program = hidden / "safehold"
    program.write_text(f'#!/bin/sh\nexec {server_command()} "$@"\n')
    program.chmod(0o755)
    repo = Path(tempfile.mkdtemp(prefix="safehold-rootrepo-"))  # 0700, root's
    public = Path(tempfile.mkdtemp(prefix="safehold-conf-"))
    public.chmod(0o755)
    log, recipients = public / "safehold.log", public / "recipients.txt"
    for path in (log, recipients):
        path.write_text("")
        path.chmod(0o600)
    config = public / "safehold.toml"
    config.write_text(f'log_file = "{log}"\n[encryption]\nrecipients_file = "{recipients}"\n')
    config.chmod(0o644)
    good_repo = shared_folder("safehold-doctor-wal-")
    try:
        command = pitr_setup.server_settings(str(program), repo, config)["archive_command"]
        pitr_setup.apply_settings(archiving.target, {"archive_command": command})
        blocked = doctor(run_cli, db, 1, env=on(archiving))["archive_command access"]
        assert blocked["result"] == "FAIL"
        user = UNPRIVILEGED_USER
        assert blocked["detail"].startswith(
            f"as {user!r} (uid {pwd.getpwnam(user).pw_uid}, the server's OS user), the "
            "archive_command cannot work: "
        )
        detail = blocked["detail"]
        assert f"program {program}: {user!r} cannot enter {hidden} (0700, root:root)" in detail
        assert f"repository {repo}: {user!r} may not write it (0700, root:root)" in detail
        assert f"log file {log}: {user!r} may not write it (0600, root:root)" in detail
        assert f"age recipients file {recipients}: {user!r} may not read it (0600" in detail
        assert f"chmod o+x {hidden}" in blocked["fix"]
        assert f"chown -R {user} {repo}" in blocked["fix"]
        assert f"chmod g+r {recipients}" in blocked["fix"]

        # Healthy: a program the server's user may run, its repository and its log file.
        give_to_server(log)
        config.write_text(f'log_file = "{log}"\n')
        command = pitr_setup.server_settings(server_command(), good_repo, config)["archive_command"]
        pitr_setup.apply_settings(archiving.target, {"archive_command": command})
        switch_and_wait(archiving.target, archiving.root / "server.log")
        healthy = doctor(run_cli, db, 0, env=on(archiving))
        assert healthy["wal archiver"]["result"] == "OK"
        assert "earlier failure(s)" in healthy["wal archiver"]["detail"]
        ok = healthy["archive_command access"]
        assert ok["result"] == "OK", ok
        assert "safehold starts (safehold, version" in ok["detail"]
        assert f"repository {good_repo}" in ok["detail"] and f"log file {log}" in ok["detail"]
    finally:
        for folder in (hidden, repo, public, good_repo):
            shutil.rmtree(folder, ignore_errors=True)


def test_full_data_folder(run_cli: CliRunner, db: PgTarget) -> None:
    mount = Path(tempfile.mkdtemp(prefix="safehold-small-"))  # the server's user must reach it
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], check=True)
    cluster = SandboxCluster(mount / "pg")
    try:
        cluster.start()
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * (free - 2 * 1024 * 1024))
        report = doctor(run_cli, db, 1, env=on(cluster))
        space = report["data folder space"]
        assert space["result"] == "FAIL"
        assert f"of the server's data folder {cluster.data}" in space["detail"]
        assert "pre_restore" in space["fix"]
        ballast.unlink()
        assert doctor(run_cli, db, 0, env=on(cluster))["data folder space"]["result"] == "OK"
    finally:
        cluster.remove()
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
