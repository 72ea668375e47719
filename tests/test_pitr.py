"""PITR against a real archiving cluster: wal-push as archive_command, base backup, restore to a
time between two batches, the chain check, and the push/fetch edge cases."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from safehold.model import Event
from safehold.operations import pitr, wal
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER, free_port
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import ROOT, seed_env

AS_ROOT = os.geteuid() == 0
RUN_AS = UNPRIVILEGED_USER if AS_ROOT else None


def server_command() -> str:
    """How the server (user nobody when we are root) runs safehold: the venv's interpreter may
    sit under a folder that user cannot enter, so as root use the system Python 3.11 with the
    project and the venv's packages on PYTHONPATH."""
    python = shutil.which("python3.11", path="/usr/bin") if AS_ROOT else None
    paths = f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}"
    return f"env PYTHONPATH={paths} {python or sys.executable} -m safehold"


def shared_folder(prefix: str) -> Path:
    """A folder in /tmp the server user owns (it writes the archive / runs the restore)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o700)
    if RUN_AS is not None:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    return folder


def quiet(_event: Event) -> None:
    return None


class Archiving:
    def __init__(self, cluster: SandboxCluster, repo: LocalStorage) -> None:
        self.cluster = cluster
        self.repo = repo

    @property
    def target(self) -> PgTarget:
        return self.cluster.target

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        with connect(self.target, "postgres", autocommit=True) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def switch_and_wait(self, timeout: float = 60) -> str:
        segment = str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, failed = self.sql("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[
                0
            ]
            if done is not None and str(done) >= segment:
                return segment
            time.sleep(0.2)
        log = (self.cluster.root / "server.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{segment} not archived (failed {failed}): {log}")


@pytest.fixture(scope="module")
def archiving() -> Iterator[Archiving]:
    repo_dir = shared_folder("safehold-wal-")
    cluster = SandboxCluster()
    cluster.start()
    try:
        settings = wal.server_settings(server_command(), repo_dir)
        pending = wal.apply_settings(cluster.target, settings)
        assert "archive_mode" in pending
        log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", log, "-m", "fast", "-w", "restart")
        yield Archiving(cluster, LocalStorage(repo_dir))
    finally:
        cluster.remove()
        shutil.rmtree(repo_dir, ignore_errors=True)


def insert_batch(db: Archiving, batch: int) -> datetime:
    db.sql(f"INSERT INTO items SELECT {batch}, g FROM generate_series(1, 1000) g")
    return datetime.now(UTC)


def test_restore_to_a_time_between_two_batches(archiving: Archiving) -> None:
    db = archiving
    db.sql("CREATE TABLE items (batch int, n int)")
    base = pitr.base_backup(db.target, db.repo, quiet)
    assert base.start_segment.startswith("00000001")
    insert_batch(db, 1)
    db.switch_and_wait()
    insert_batch(db, 2)
    db.switch_and_wait()
    time.sleep(1.0)
    between = datetime.now(UTC)
    time.sleep(1.0)
    insert_batch(db, 3)
    db.switch_and_wait()

    target_dir = shared_folder("safehold-pitr-") / "data"
    port = free_port()
    result = pitr.restore(
        db.repo,
        target_dir,
        to_time=between,
        command=server_command(),
        bin_dir=db.cluster.bin_dir,
        run_as=RUN_AS,
        port=port,
        user="postgres",
        keep_running=True,
        sink=quiet,
    )
    try:
        assert result.base == base.name
        assert "recovery stopping before commit" in result.reached
        with psycopg.connect(host=str(target_dir), port=port, user="postgres") as conn:
            rows = conn.execute("SELECT batch, count(*) FROM items GROUP BY 1 ORDER BY 1")
            assert rows.fetchall() == [(1, 1000), (2, 1000)]
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    finally:
        pitr._pg_ctl(db.cluster.bin_dir, RUN_AS, target_dir, "-m", "fast", "-w", "stop")
        shutil.rmtree(target_dir.parent, ignore_errors=True)

    base_found, report = pitr.check(db.repo)
    assert base_found.name == base.name and report.ok and report.segments >= 4


def test_check_reports_a_gap(archiving: Archiving, tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(archiving.repo.root, copy)
    _base, report = pitr.check(LocalStorage(copy))
    assert report.ok and report.newest is not None
    gone = wal.next_segment(report.start)
    (copy / "wal" / f"{gone}.sha256").unlink()
    (copy / "wal" / f"{gone}.zst").unlink()
    env = seed_env(archiving.target, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "safehold", "pitr", "check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 6, proc.stderr
    assert f"missing: {gone}" in proc.stdout


def test_cli_base_backup_and_restore_latest(archiving: Archiving) -> None:
    db = archiving
    env = seed_env(db.target, db.repo.root)
    base = subprocess.run(
        [sys.executable, "-m", "safehold", "pitr", "base-backup"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert base.returncode == 0, base.stderr
    insert_batch(db, 4)
    db.switch_and_wait()
    target_dir = shared_folder("safehold-pitr-") / "data"
    argv = ["pitr", "restore", "--latest", "--target-dir", str(target_dir), "--keep-running"]
    argv += ["--command", server_command(), "--port", str(port := free_port())]
    if RUN_AS is not None:
        argv += ["--server-user", RUN_AS]
    restored = subprocess.run(
        [sys.executable, "-m", "safehold", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        assert restored.returncode == 0, restored.stderr
        assert "server running on port" in restored.stdout
        with psycopg.connect(host=str(target_dir), port=port, user="postgres") as conn:
            rows = conn.execute("SELECT batch, count(*) FROM items GROUP BY 1 ORDER BY 1")
            assert rows.fetchall() == [(1, 1000), (2, 1000), (3, 1000), (4, 1000)]
    finally:
        pitr._pg_ctl(db.cluster.bin_dir, RUN_AS, target_dir, "-m", "fast", "-w", "stop")
        shutil.rmtree(target_dir.parent, ignore_errors=True)


def run_cli(*args: str, backup_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "SAFEHOLD_"))}
    env.update(BACKUP_DIR=str(backup_dir), PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=backup_dir.parent,
    )


def test_wal_push_twice_identical_ok_different_refused(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segment = tmp_path / "000000010000000000000042"
    segment.write_bytes(os.urandom(1 << 20) + bytes(15 << 20))
    assert run_cli("wal-push", str(segment), backup_dir=repo).returncode == 0
    again = run_cli("wal-push", str(segment), backup_dir=repo)
    assert again.returncode == 0, again.stderr
    assert "already archived" in again.stderr
    segment.write_bytes(os.urandom(16 << 20))
    refused = run_cli("wal-push", str(segment), backup_dir=repo)
    assert refused.returncode == 6
    assert "already exists with different content" in refused.stderr

    out = tmp_path / "fetched"
    fetched = run_cli("wal-fetch", segment.name, str(out), backup_dir=repo)
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes()[:16] != segment.read_bytes()[:16]  # the first push is kept
    assert len(out.read_bytes()) == 16 << 20


def test_wal_fetch_missing_exits_1_and_damaged_exits_6(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    missing = run_cli("wal-fetch", "000000010000000000000007", str(tmp_path / "x"), backup_dir=repo)
    assert missing.returncode == 1
    assert "not in the WAL archive" in missing.stderr
    assert not (tmp_path / "x").exists()

    segment = tmp_path / "000000010000000000000008"
    segment.write_bytes(os.urandom(1 << 16))
    assert run_cli("wal-push", str(segment), backup_dir=repo).returncode == 0
    stored = repo / "wal" / f"{segment.name}.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    damaged = run_cli("wal-fetch", segment.name, str(tmp_path / "y"), backup_dir=repo)
    assert damaged.returncode == 6
    assert "damaged" in damaged.stderr
    assert not (tmp_path / "y").exists()


def test_setup_prints_the_settings(tmp_path: Path) -> None:
    shown = run_cli("pitr", "setup", "--command", "/opt/safehold", backup_dir=tmp_path / "b")
    assert shown.returncode == 0, shown.stderr
    assert "archive_mode = 'on'" in shown.stdout
    assert f"/opt/safehold wal-push --backup-dir {tmp_path / 'b'} %p" in shown.stdout
