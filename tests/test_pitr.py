"""PITR against a real archiving cluster: wal-push as archive_command, base backup, restore to a
time between two batches, the chain check, and the push/fetch edge cases."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from safehold.errors import IntegrityError
from safehold.model import Event
from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import base as pitr
from safehold.operations.pitr import chain as wal_chain
from safehold.operations.pitr import prefetch as wal_prefetch
from safehold.operations.pitr import restore as pitr_restore
from safehold.sandbox.cluster import free_port
from safehold.storage import LocalStorage

from .conftest import ROOT, seed_env
from .pitr_support import (
    RUN_AS,
    Archiving,
    Member,
    archiving_cluster,
    batches,
    insert_batch,
    new_target_dir,
    quiet,
    repacked_base,
    server,
    server_command,
    unpack_base,
)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def archiving() -> Iterator[Archiving]:
    with archiving_cluster() as db:
        yield db


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

    target_dir = new_target_dir()
    spec = server(db.cluster.bin_dir)
    result = pitr_restore.restore(
        wal.WalArchive(db.repo),
        target_dir,
        pitr_restore.Target(time=between),
        spec,
        keep_running=True,
        sink=quiet,
    )
    try:
        assert result.base == base.name and result.read_from == "local"
        assert result.read_ahead >= 2  # the server took segments from the read-ahead spool
        assert not (target_dir / "safehold_wal_spool").exists()
        assert "recovery stopping before commit" in result.reached
        assert result.timeline == 2  # promotion starts a new timeline
        assert batches(target_dir, spec.port) == [(1, 1000), (2, 1000)]
        with psycopg.connect(host=str(target_dir), port=spec.port, user="postgres") as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            # a side copy must not archive into the source's repository
            assert conn.execute("SHOW archive_mode").fetchone() == ("off",)
    finally:
        pitr_restore.stop(spec, target_dir)
        shutil.rmtree(target_dir.parent, ignore_errors=True)

    ((base_found, report),) = pitr.check(wal.WalArchive(db.repo))
    assert base_found.name == base.name
    assert report is not None and report.ok and report.segments >= 4


def test_read_ahead_follows_timeline_switches() -> None:
    switches = wal_chain.parse_history("1\t0/3000158\tno recovery target\n", 2)
    names = wal_prefetch.chain("000000010000000000000001", switches)
    assert [next(names) for _ in range(4)] == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000020000000000000003",  # the switch segment is read from the child timeline
        "000000020000000000000004",
    ]
    command = wal_prefetch.restore_command(Path("/data/spool"), "safehold wal-fetch")
    assert command.startswith("if test -f /data/spool/%f; then mv /data/spool/%f ")
    assert command.endswith("else safehold wal-fetch %f %p; fi")


def test_check_reports_a_gap(archiving: Archiving, tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(archiving.repo.root, copy)
    (_base, report), *_ = pitr.check(wal.WalArchive(LocalStorage(copy)))
    assert report is not None and report.ok and report.newest is not None
    gone = wal.next_segment(report.start)
    archived_at = datetime.fromtimestamp(
        (copy / "wal" / f"{report.start}.sha256").stat().st_mtime, UTC
    )
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
    assert f"missing {gone}: changes from {archived_at:%Y-%m-%d %H:%M:%S} UTC" in proc.stdout
    assert ": gap, WAL " in proc.stdout

    (base_record,) = pitr.base_backups(LocalStorage(copy))
    stored = copy / base_record.data_key
    data = bytearray(stored.read_bytes())
    data[len(data) // 3] ^= 0x01
    stored.write_bytes(bytes(data))
    checked = subprocess.run(
        [sys.executable, "-m", "safehold", "pitr", "check", "--verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 6, checked.stderr
    (row,) = json.loads(checked.stdout)
    assert row["state"] == "damaged" and "does not match the record" in row["damage"]


def test_cli_base_backup_and_restore_latest(archiving: Archiving) -> None:
    db = archiving
    env = seed_env(db.target, db.repo.root)
    base = subprocess.run(
        [sys.executable, "-m", "safehold", "backup", "--physical", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert base.returncode == 0, base.stderr
    record = json.loads(base.stdout)
    assert record["file"] == f"{record['name']}.tar.zst" and record["encryption"] is None
    assert db.repo.exists(f"base/{record['file']}")
    insert_batch(db, 4)
    db.switch_and_wait()
    target_dir = new_target_dir()
    argv = ["restore", "--pitr", "--to-end", "--target-dir", str(target_dir), "--keep-running"]
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
        assert batches(target_dir, port) == [(1, 1000), (2, 1000), (3, 1000), (4, 1000)]
    finally:
        pitr_restore.stop(server(db.cluster.bin_dir, port), target_dir)
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


def _flip_a_byte(members: list[Member]) -> None:
    index, (info, data) = max(enumerate(members), key=lambda m: len(m[1][1]))
    members[index] = (info, data[:100] + bytes([data[100] ^ 1]) + data[101:])


def _add_a_file(members: list[Member]) -> None:
    info = copy.copy(next(i for i, _ in members if i.name.startswith("global/")))
    info.name = "global/99999"
    members.insert(len(members) - 1, (info, b"\0" * 8192))


def _drop_a_file(members: list[Member]) -> None:
    members[:] = [m for m in members if not m[0].name.startswith("global/1")][:-1] + members[-1:]


CHANGES = {"none": None, "changed": _flip_a_byte, "extra": _add_a_file, "missing": _drop_a_file}
SAID = {
    "changed": "checksum mismatch",
    "extra": '"global/99999" is in the backup but not in the manifest',
    "missing": "is in the manifest but not in the backup",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_manifest_check_agrees_with_pg_verifybackup(
    archiving: Archiving, tmp_path: Path, change: str
) -> None:
    """A base backup whose sha256 is right but whose files are not those of its manifest is
    refused before the server starts, as pg_verifybackup would refuse it; an intact one
    (repacked by Python's tarfile) restores."""
    pitr.base_backup(archiving.target, archiving.repo, quiet)
    archiving.switch_and_wait()
    repo = LocalStorage(
        repacked_base(archiving.repo, tmp_path / "repo", CHANGES[change] or (lambda _m: None))
    )
    unpack_base(repo, tmp_path / "by-tar")
    tool = archiving.cluster.bin_dir / "pg_verifybackup"
    verdict = subprocess.run([str(tool), "-n", "-q", str(tmp_path / "by-tar")], check=False)
    target_dir = new_target_dir()
    try:
        if change == "none":
            assert verdict.returncode == 0
            result = pitr_restore.restore(
                wal.WalArchive(repo),
                target_dir,
                pitr_restore.Target(),
                server(archiving.cluster.bin_dir),
                sink=quiet,
            )
            assert result.verified_by == "CRC-32C while unpacking"
            return
        assert verdict.returncode != 0
        events: list[Event] = []
        with pytest.raises(IntegrityError, match="does not match its manifest") as refused:
            pitr_restore.restore(
                wal.WalArchive(repo),
                target_dir,
                pitr_restore.Target(),
                server(archiving.cluster.bin_dir),
                sink=events.append,
            )
        assert SAID[change] in str(refused.value)
        said = [e.message for e in events]
        assert not any("checked against its manifest" in m for m in said), said
        # Unpacked, refused before any server started, and undone: no half-restored folder.
        assert any(m.startswith("undoing the unfinished restore") for m in said), said
        assert not target_dir.exists()
    finally:
        shutil.rmtree(target_dir.parent, ignore_errors=True)
