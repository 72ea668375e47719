"""``safehold doctor`` against real services: a healthy setup, then each thing that can break.

Every case runs the real command (``--json``) against the test cluster, the private Docker
engine, real tmpfs mounts and real files, and checks the result and the detail of the check
concerned, the exit code, and that the password never shows.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.volumes import Volume

from safehold import naming
from safehold.sandbox.cluster import free_port
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sinks.log import human_bytes
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import ROOT, CliRunner

Report = dict[str, dict[str, Any]]
NO_DOCKER = {"DOCKER_HOST": ""}


def doctor(
    run_cli: CliRunner, db: PgTarget, code: int, *, env: dict[str, str] | None = None, **kw: Any
) -> Report:
    """Run ``safehold doctor --json``; check the exit code, the shape, and that no secret shows."""
    result = run_cli("doctor", "--json", env={**NO_DOCKER, **(env or {})}, **kw)
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert db.password and db.password not in result.stdout + result.stderr
    checks = json.loads(result.stdout)
    assert all(set(c) == {"check", "result", "detail", "fix"} for c in checks)
    assert all(c["result"] in ("OK", "WARN", "FAIL", "SKIP") for c in checks)
    report = {c["check"]: c for c in checks}
    assert len(report) == len(checks), "check names are unique"
    failed = [c["check"] for c in checks if c["result"] == "FAIL"]
    if failed:
        assert f"checks failed: {', '.join(failed)}" in result.stderr
        assert "hint:" in result.stderr
    return report


def backup(run_cli: CliRunner, env: dict[str, str] | None = None) -> str:
    result = run_cli("backup", "--json", env=env)
    assert result.returncode == 0, result.stderr
    name = json.loads(result.stdout)["artifact"]
    assert isinstance(name, str)
    return name


def server_major(db: PgTarget) -> int:
    with connect(db, autocommit=True) as conn:
        return conn.info.server_version // 10000


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Real tmpfs mounts (tests run as root: a read-only mount stops root, chmod does not)."""
    made: list[Path] = []
    if os.geteuid() != 0:
        pytest.fail("these cases need root to mount tmpfs", pytrace=False)

    def mount(size: str = "1m", *, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(made)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        made.append(point)
        return point

    yield mount
    for point in reversed(made):
        subprocess.run(["umount", str(point)], check=False)


# ------------------------------------------------------------------ healthy


def test_healthy_setup_is_all_ok(run_cli: CliRunner, db: PgTarget, repo: LocalStorage) -> None:
    name = backup(run_cli)

    # The project's own scripts/; a database-only app, so no weekly full-system job.
    report = doctor(run_cli, db, 0, cwd=ROOT, env={"SAFEHOLD_SCHEDULE_FULL": "off"})

    skipped = ["wal archiver", "archive_command access", "docker"]  # archiving is off here
    assert [c["check"] for c in report.values() if c["result"] != "OK"] == skipped
    assert {report[name]["result"] for name in skipped} == {"SKIP"}
    assert "archive_mode is off" in report["wal archiver"]["detail"]
    assert "of the server's data folder" in report["data folder space"]["detail"]
    assert report["leftover databases"]["result"] == "OK"
    assert report["unfinished files"]["result"] == "OK"
    assert "DOCKER_HOST not set" in report["docker"]["detail"]
    assert f"{repo.root} is writable (0700)" in report["backup folder"]["detail"]
    size = human_bytes(repo.size(name))
    assert f"takes {size} together (1 database {size})" in report["free space"]["detail"]
    assert f"{repo.root}: wrote, read back and removed" in report["storage local"]["detail"]
    assert f"answers at {db.host}:{db.port}" in report["database server"]["detail"]
    assert repr(db.user) in report["database login"]["detail"]
    assert f"database {db.dbname!r} exists" in report["database"]["detail"]
    major = server_major(db)
    for tool in ("pg_dump", "pg_restore"):
        assert f"server {major}" in report[tool]["detail"]
    assert str(ROOT / "scripts" / "backup.sh") in report["scripts"]["detail"]
    assert str(ROOT / "scripts" / "restore.sh") in report["scripts"]["detail"]
    assert all(c["fix"] is None for c in report.values() if c["result"] == "OK")
    assert {p.name for p in repo.root.iterdir() if "doctor" in p.name} == set()  # probe gone


def test_plain_output_and_help(run_cli: CliRunner, db: PgTarget) -> None:
    result = run_cli("doctor", env={**NO_DOCKER, "DB_PORT": str(free_port())})

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    server = next(line for line in lines if line.startswith("FAIL") and "database server" in line)
    assert "cannot reach" in server
    fix = lines[lines.index(server) + 1]
    assert fix.strip().startswith("fix: check DB_HOST/DB_PORT")
    rows = [line for line in lines if line.split(" ", 1)[0] in ("OK", "WARN", "FAIL", "SKIP")]
    assert lines[-1].startswith(f"{len(rows)} checks: ") and "1 FAIL" in lines[-1]
    assert "error: 1 of" in result.stderr

    usage = run_cli("doctor", "--help")
    assert usage.returncode == 0
    text = " ".join(usage.stdout.split())
    assert (
        "Exit code 0 when no check FAILs (WARN and SKIP included), 1 when any check FAILs" in text
    )


def test_healthy_docker_volumes(
    run_cli: CliRunner,
    db: PgTarget,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    volume: Volume,
) -> None:
    env = {"DOCKER_HOST": engine.base_url, "SAFEHOLD_VOLUMES_INCLUDE": f"{volume.name},none-*"}

    report = doctor(run_cli, db, 0, env=env)

    assert report["docker"]["result"] == "OK"
    assert f"answers at {engine.base_url}" in report["docker"]["detail"]
    check = report[f"volume {volume.name}"]
    assert check["result"] == "OK"
    assert f"readable at {volume.attrs['Mountpoint']}" in check["detail"]


def test_broken_config_is_a_failed_check(run_cli: CliRunner, db: PgTarget, tmp_path: Path) -> None:
    config = tmp_path / "safehold.toml"
    config.write_text('backup_dri = "/srv/backups"\n')

    report = doctor(run_cli, db, 1, env={"SAFEHOLD_CONFIG": str(config)})

    assert list(report) == ["config"]
    assert report["config"]["result"] == "FAIL"
    assert f"{config}: unknown key 'backup_dri'" in report["config"]["detail"]
    assert "did you mean 'backup_dir'?" in report["config"]["fix"]


# ------------------------------------------------------------------ database


def test_server_down(run_cli: CliRunner, db: PgTarget) -> None:
    port = free_port()

    report = doctor(run_cli, db, 1, env={"DB_PORT": str(port)})

    server = report["database server"]
    assert server["result"] == "FAIL"
    assert "server down or unreachable" in server["detail"] and f":{port}" in server["detail"]
    assert "Connection refused" in server["detail"]
    assert f"pg_isready -h {db.host} -p {port}" in server["fix"]
    assert report["database login"]["result"] == "SKIP"
    assert report["database"]["result"] == "SKIP"
    assert report["pg_dump"]["result"] == "OK"
    assert "not compared" in report["pg_dump"]["detail"]


def test_something_else_on_the_port(run_cli: CliRunner, db: PgTarget) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never speaks PostgreSQL
        port = listener.getsockname()[1]
        report = doctor(
            run_cli, db, 1, env={"DB_PORT": str(port), "SAFEHOLD_DATABASE_CONNECT_TIMEOUT": "2"}
        )

    server = report["database server"]
    assert server["result"] == "FAIL"
    assert "TCP port is open" in server["detail"]


def test_wrong_password(run_cli: CliRunner, db: PgTarget) -> None:
    wrong = "wrong-" + secrets.token_hex(8)

    report = doctor(run_cli, db, 1, env={"PGPASSWORD": wrong})

    assert report["database server"]["result"] == "OK"
    login = report["database login"]
    assert login["result"] == "FAIL"
    assert "credentials rejected" in login["detail"] and repr(db.user) in login["detail"]
    assert "PGPASSWORD" in login["fix"]
    assert report["database"]["result"] == "SKIP"
    assert wrong not in json.dumps(report)


def test_database_missing(run_cli: CliRunner, db: PgTarget) -> None:
    missing = f"nosuchdb_{secrets.token_hex(3)}"

    report = doctor(run_cli, db, 1, env={"DB_NAME": missing})

    assert report["database server"]["result"] == "OK"
    assert report["database login"]["result"] == "OK"
    database = report["database"]
    assert database["result"] == "FAIL"
    assert "database missing" in database["detail"] and missing in database["detail"]
    assert "DB_NAME" in database["fix"]
    assert f"server {server_major(db)}" in report["pg_dump"]["detail"]  # still compared


def test_pg_tools_missing_or_older_than_the_server(
    run_cli: CliRunner, db: PgTarget, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    report = doctor(run_cli, db, 1, env={"SAFEHOLD_DATABASE_PG_BIN_DIR": str(empty)})
    assert report["pg_dump"]["result"] == "FAIL"
    assert f"pg_dump not found in {empty}" in report["pg_dump"]["detail"]

    # The one stand-in here: programs that only answer --version like PostgreSQL 12's tools.
    old = tmp_path / "old-bin"
    old.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        (old / tool).write_text(f'#!/bin/sh\necho "{tool} (PostgreSQL) 12.22"\n')
        (old / tool).chmod(0o755)
    report = doctor(run_cli, db, 1, env={"SAFEHOLD_DATABASE_PG_BIN_DIR": str(old)})
    major = server_major(db)
    for tool in ("pg_dump", "pg_restore"):
        assert report[tool]["result"] == "FAIL"
        assert f"{tool} 12 is older than the server ({major})" in report[tool]["detail"]
        assert f"postgresql-client-{major}" in report[tool]["fix"]


# ------------------------------------------------------------------ repository


def test_world_readable_backup_file_is_a_warning(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage
) -> None:
    name = backup(run_cli)
    repo.path(name).chmod(0o644)
    repo.path(naming.manifest_key(name)).chmod(0o640)

    report = doctor(run_cli, db, 0)  # a warning alone does not fail

    folder = report["backup folder"]
    assert folder["result"] == "WARN"
    assert f"{repo.path(name)} (0644)" in folder["detail"]
    assert f"{repo.path(naming.manifest_key(name))} (0640)" in folder["detail"]
    assert folder["fix"] == f"chmod -R go-rwx {repo.root}"

    subprocess.run(["chmod", "-R", "go-rwx", str(repo.root)], check=True)
    assert doctor(run_cli, db, 0)["backup folder"]["result"] == "OK"


def test_backup_dir_on_a_read_only_mount(
    run_cli: CliRunner, db: PgTarget, tmpfs: Callable[..., Path]
) -> None:
    read_only = tmpfs(read_only=True)

    report = doctor(run_cli, db, 1, env={"BACKUP_DIR": str(read_only)})

    folder = report["backup folder"]
    assert folder["result"] == "FAIL"
    assert f"{read_only} is not writable: it is on a read-only file system" in folder["detail"]
    storage = report["storage local"]
    assert storage["result"] == "FAIL"
    assert str(read_only) in storage["detail"] and "read-only file system" in storage["detail"]
    assert "BACKUP_DIR" in storage["fix"]


def test_a_file_where_the_backup_dir_should_be(
    run_cli: CliRunner, db: PgTarget, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")

    report = doctor(run_cli, db, 1, env={"BACKUP_DIR": str(blocker)})

    folder = report["backup folder"]
    assert folder["result"] == "FAIL"
    assert f"{blocker} is not a folder" in folder["detail"]
    assert report["storage local"]["result"] == "SKIP"


def test_missing_backup_dir_is_a_warning(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage
) -> None:
    report = doctor(run_cli, db, 0)

    assert report["backup folder"]["result"] == "WARN"
    assert "does not exist yet" in report["backup folder"]["detail"]
    assert not repo.root.exists()  # doctor did not create it


def test_low_free_space(run_cli: CliRunner, db: PgTarget, tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("1m")
    backups = disk / "backups"
    env = {"BACKUP_DIR": str(backups)}
    size = (backups / backup(run_cli, env)).stat().st_size
    filler = disk / "other-data.bin"

    def leave_free(wanted: int) -> int:
        """Fill the disk with other data until about ``wanted`` bytes are free; return free."""
        filler.unlink(missing_ok=True)
        usage = os.statvfs(disk)
        free = usage.f_bavail * usage.f_frsize
        page = usage.f_frsize
        filler.write_bytes(b"\0" * (free - (wanted // page) * page))
        usage = os.statvfs(disk)
        return usage.f_bavail * usage.f_frsize

    free = leave_free(size // 2)
    assert free < size
    check = doctor(run_cli, db, 1, env=env)["free space"]
    assert check["result"] == "FAIL"
    assert check["detail"].startswith(f"{human_bytes(free)} free for {backups}")
    assert f"takes {human_bytes(size)} together" in check["detail"]
    assert f"needs {human_bytes(int(size * 1.2))} (1.2x)" in check["detail"]
    assert "will not fit" in check["detail"]
    assert "BACKUP_DIR" in check["fix"]

    free = leave_free(int(size * 1.6))
    assert size * 1.2 <= free < size * 2
    check = doctor(run_cli, db, 0, env=env)["free space"]
    assert check["result"] == "WARN"
    assert f"{human_bytes(int(size * 2))} recommended (2.0x)" in check["detail"]


def test_a_broken_manifest_is_listed_as_damaged_and_doctor_still_runs(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage
) -> None:
    name = backup(run_cli)
    manifest = repo.path(naming.manifest_key(name))
    data = json.loads(manifest.read_text())
    data["started_at"] = 20241201  # valid JSON, a type the catalog does not expect
    manifest.write_text(json.dumps(data))

    report = doctor(run_cli, db, 0)

    assert report["free space"]["result"] == "OK"
    assert report["database"]["result"] == "OK"
    assert report["storage local"]["result"] == "OK"
    listed = json.loads(run_cli("list", "--json").stdout)
    assert [(r["name"], r["status"]) for r in listed if r["kind"] == "database"] == [
        (name, "damaged")
    ]


# ------------------------------------------------------------------ scripts


def test_scripts(run_cli: CliRunner, db: PgTarget, tmp_path: Path) -> None:
    project = tmp_path / "app"
    scripts = project / "scripts"
    scripts.mkdir(parents=True)
    report = doctor(run_cli, db, 0, cwd=project)
    assert report["scripts"]["result"] == "SKIP"
    assert f"looked in {scripts}" in report["scripts"]["detail"]

    for script in ("backup.sh", "restore.sh"):
        (scripts / script).write_text("#!/bin/sh\nexit 0\n")
    (scripts / "restore.sh").chmod(0o755)
    (scripts / "backup.sh").chmod(0o644)
    report = doctor(run_cli, db, 1, cwd=project)
    assert report["scripts"]["result"] == "FAIL"
    assert report["scripts"]["detail"] == f"not executable: {scripts / 'backup.sh'}"
    assert report["scripts"]["fix"] == f"chmod +x {scripts / 'backup.sh'}"

    (scripts / "backup.sh").chmod(0o777)
    report = doctor(run_cli, db, 0, cwd=project)
    assert report["scripts"]["result"] == "WARN"
    assert str(scripts / "backup.sh") in report["scripts"]["detail"]
    assert str(scripts / "restore.sh") not in report["scripts"]["detail"]


# ------------------------------------------------------------------ Docker


def test_configured_volume_missing(
    run_cli: CliRunner, db: PgTarget, engine: SandboxDockerd, volume: Volume
) -> None:
    missing = f"safehold-missing-{secrets.token_hex(3)}"
    env = {"DOCKER_HOST": engine.base_url, "SAFEHOLD_VOLUMES_INCLUDE": f"{volume.name},{missing}"}

    report = doctor(run_cli, db, 1, env=env)

    assert report["docker"]["result"] == "OK"
    check = report[f"volume {missing}"]
    assert check["result"] == "FAIL"
    assert f"no Docker volume {missing}" in check["detail"]
    assert "docker volume ls" in check["fix"]
    assert report[f"volume {volume.name}"]["result"] == "OK"  # the others are still checked


def test_docker_host_on_a_dead_socket(run_cli: CliRunner, db: PgTarget, tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:  # a socket file nobody listens on
        sock.bind(str(dead))
    env = {"DOCKER_HOST": f"unix://{dead}", "SAFEHOLD_VOLUMES_INCLUDE": "app-data"}

    report = doctor(run_cli, db, 1, env=env)

    check = report["docker"]
    assert check["result"] == "FAIL"
    assert "cannot reach the Docker engine" in check["detail"]
    assert f"DOCKER_HOST: unix://{dead}" in check["detail"]
    assert "DOCKER_HOST" in check["fix"]
    assert report["volumes"]["result"] == "SKIP"
    assert "not reached" in report["volumes"]["detail"]
