"""Recovery targets beyond a time: an LSN and a named restore point (falling back to an older
base backup), a second recovery that follows a new timeline, a chain encrypted and stored in
S3 restored after the local copy is gone, and a server killed while archiving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from safehold.crypto import generate_keypair
from safehold.errors import IntegrityError, UsageError
from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import base as pitr
from safehold.operations.pitr import restore as pitr_restore
from safehold.operations.pitr.drill import SCRATCH_PREFIX
from safehold.operations.pitr.restore import Target
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import seed_env
from .pitr_support import (
    RUN_AS,
    Archiving,
    archiving_cluster,
    batches,
    give_to_server,
    insert_batch,
    new_target_dir,
    quiet,
    server,
    server_command,
    shared_folder,
    switch_and_wait,
)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def archiving() -> Iterator[Archiving]:
    with archiving_cluster() as db:
        db.sql("CREATE TABLE items (batch int, n int)")
        yield db


def restore(db: Archiving, target: Target, **options: object) -> pitr_restore.RestoreResult:
    spec = server(db.cluster.bin_dir)
    return pitr_restore.restore(
        wal.WalArchive(db.repo),
        new_target_dir(),
        target,
        spec,
        keep_running=True,
        sink=quiet,
        **options,  # type: ignore[arg-type]
    )


def rows_and_stop(db: Archiving, result: pitr_restore.RestoreResult) -> list[tuple[object, ...]]:
    try:
        return batches(result.target_dir, result.port)
    finally:
        pitr_restore.stop(server(db.cluster.bin_dir, result.port), result.target_dir)
        shutil.rmtree(result.target_dir.parent, ignore_errors=True)


def test_restore_to_an_lsn_and_to_a_named_point_behind_a_newer_base(archiving: Archiving) -> None:
    db = archiving
    first = pitr.base_backup(db.target, db.repo, quiet)
    insert_batch(db, 1)
    lsn = str(db.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    db.sql("SELECT pg_create_restore_point('before-batch-2')")
    insert_batch(db, 2)
    db.switch_and_wait()
    newer = pitr.base_backup(db.target, db.repo, quiet)  # after the restore point
    insert_batch(db, 3)
    db.switch_and_wait()

    at_lsn = restore(db, Target(lsn=lsn))
    assert at_lsn.base == first.name  # the newer base ends after the LSN
    assert f'recovery stopping after WAL location (LSN) "{lsn}"' in at_lsn.reached
    assert rows_and_stop(db, at_lsn) == [(1, 1000)]

    named = restore(db, Target(name="before-batch-2"))
    assert named.base == first.name  # tried the newer one first: the point is not after it
    assert 'recovery stopping at restore point "before-batch-2"' in named.reached
    assert rows_and_stop(db, named) == [(1, 1000)]

    latest = restore(db, Target())
    assert latest.base == newer.name
    assert rows_and_stop(db, latest) == [(1, 1000), (2, 1000), (3, 1000)]

    with pytest.raises(pitr_restore.TargetNotReached, match="archive ends before"):
        restore(db, Target(name="never-made"))

    # The same point as a drill: a scratch cluster, every table read, recorded, removed.
    env = seed_env(db.target, db.repo.root)
    argv = ["drill", "--pitr", "--to-name", "before-batch-2", "--json"]
    argv += ["--command", server_command()]
    if RUN_AS is not None:
        argv += ["--server-user", RUN_AS]
    drilled = cli(env, *argv)
    assert drilled.returncode == 0, drilled.stderr
    record = json.loads(drilled.stdout)
    (member,) = record["members"]
    assert record["outcome"] == "ok" and member["base"] == first.name
    assert member["database"] == "postgres" and member["rows"] == 1000
    assert db.repo.exists(f".safehold/drills/{record['id']}.json")
    assert not list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
    shown = cli(env, "status", "--json")  # the PITR drill's record sits among the others
    assert shown.returncode in (0, 1, 2) and "Traceback" not in shown.stderr, shown.stderr
    assert json.loads(shown.stdout)["wal"] is not None
    failed = cli(env, "drill", "--pitr", "--to-name", "never-made", *argv[4:])
    assert failed.returncode != 0 and "point-in-time drill failed" in failed.stderr


def test_restore_over_a_running_cluster_is_refused_and_force_moves_it_aside(
    archiving: Archiving,
) -> None:
    db = archiving
    spec = server(db.cluster.bin_dir)
    with pytest.raises(UsageError, match="not empty"):
        pitr_restore.restore(wal.WalArchive(db.repo), db.cluster.data, Target(), spec, sink=quiet)
    with pytest.raises(UsageError, match="a server is running"):
        pitr_restore.restore(
            wal.WalArchive(db.repo), db.cluster.data, Target(), spec, force=True, sink=quiet
        )
    assert (db.cluster.data / "PG_VERSION").exists()  # untouched
    assert not list(db.cluster.data.parent.glob("*.safehold-before-*"))

    earlier = restore(db, Target())  # a stopped cluster's folder, to restore over
    pitr_restore.stop(server(db.cluster.bin_dir, earlier.port), earlier.target_dir)
    (earlier.target_dir / "marker").write_text("the old cluster")
    again = pitr_restore.restore(
        wal.WalArchive(db.repo),
        earlier.target_dir,
        Target(),
        spec,
        force=True,
        archiving=False,  # in place it would archive by default: not into this shared archive
        sink=quiet,
    )
    try:
        assert (
            again.moved_aside is not None and again.moved_aside.parent == earlier.target_dir.parent
        )
        assert (again.moved_aside / "marker").read_text() == "the old cluster"
        assert not (again.target_dir / "marker").exists()
        assert not again.running
    finally:
        shutil.rmtree(earlier.target_dir.parent, ignore_errors=True)


def test_a_damaged_base_backup_is_refused_before_the_server_starts(
    archiving: Archiving, tmp_path: Path
) -> None:
    newest = pitr.base_backup(archiving.target, archiving.repo, quiet)
    copy = LocalStorage(tmp_path / "repo")
    shutil.copytree(archiving.repo.root, copy.root)
    stored = copy.path(newest.data_key)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    target_dir = new_target_dir()
    try:
        with pytest.raises(IntegrityError, match=f"no good copy of base backup {newest.name}"):
            pitr_restore.restore(
                wal.WalArchive(copy),
                target_dir,
                Target(),
                server(archiving.cluster.bin_dir),
                sink=quiet,
            )
        assert not target_dir.exists()  # undone: nothing half-restored is left
    finally:
        shutil.rmtree(target_dir.parent, ignore_errors=True)


def test_a_second_recovery_follows_the_new_timeline() -> None:
    with archiving_cluster() as db:
        db.sql("CREATE TABLE items (batch int, n int)")
        second_recovery(db)


def second_recovery(db: Archiving) -> None:
    """Recover to T (timeline 2, archiving into the same repository), write on it, then recover
    again from the timeline-1 base backup to a time on timeline 2."""
    base = pitr.base_backup(db.target, db.repo, quiet)
    insert_batch(db, 10)
    db.switch_and_wait()
    time.sleep(1.0)
    fork_at = datetime.now(UTC)
    time.sleep(1.0)
    insert_batch(db, 11)  # lost on timeline 2
    db.switch_and_wait()

    first = restore(db, Target(time=fork_at), archiving=True)
    try:
        assert first.base == base.name
        branch = PgTarget(host=str(first.target_dir), port=first.port, dbname="postgres")
        timeline = first.timeline
        assert timeline >= 2
        insert_batch(branch, 12)
        switch_and_wait(branch, first.target_dir / pitr_restore.LOG)
        time.sleep(1.0)
        on_branch = datetime.now(UTC)
        time.sleep(1.0)
        insert_batch(branch, 13)
        switch_and_wait(branch, first.target_dir / pitr_restore.LOG)
        assert db.repo.exists(f"wal/{timeline:08X}.history.sha256")
    finally:
        pitr_restore.stop(server(db.cluster.bin_dir, first.port), first.target_dir)

    newer_on_old_timeline = pitr.base_backup(db.target, db.repo, quiet)  # after the fork
    second = restore(db, Target(time=on_branch))
    try:
        assert second.base == base.name  # the newer timeline-1 base cannot reach timeline 2
        assert second.base != newer_on_old_timeline.name
        assert second.timeline == timeline + 1
        assert "selected new timeline ID" in second.reached
        assert batches(second.target_dir, second.port) == [(10, 1000), (12, 1000)]
    finally:
        pitr_restore.stop(server(db.cluster.bin_dir, second.port), second.target_dir)
        shutil.rmtree(second.target_dir.parent, ignore_errors=True)
        shutil.rmtree(first.target_dir.parent, ignore_errors=True)

    results = pitr.check(wal.WalArchive(db.repo))
    states = {b.name: (r.ok if r is not None else None) for b, r in results}
    assert states[base.name] is True  # its chain runs across the switch to timeline 2
    assert states[newer_on_old_timeline.name] is None


def test_an_encrypted_chain_in_s3_restores_without_the_local_copy(s3: SandboxS3) -> None:
    keys = shared_folder("safehold-keys-")
    identity = keys / "identity.txt"
    public = generate_keypair(identity)
    credentials = keys / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    bucket = s3.bucket()
    config = keys / "safehold.toml"
    config.write_text(
        f'[encryption]\nrecipients = ["{public}"]\n\n'
        f'[locations.offsite]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\n'
        f'prefix = "pg"\nregion = "us-east-1"\ncredentials_file = "{credentials}"\n'
    )
    for path in (identity, credentials, config):
        give_to_server(path)
    with archiving_cluster(config) as db:
        env = seed_env(db.target, db.repo.root) | {"SAFEHOLD_CONFIG": str(config)}
        db.sql("CREATE TABLE items (batch int, n int)")
        made = cli(env, "backup", "--physical", "--json")
        assert made.returncode == 0, made.stderr
        record = json.loads(made.stdout)
        assert record["file"].endswith(".tar.zst.age")
        assert record["encryption"]["recipients"] == [public]
        insert_batch(db, 1)
        db.switch_and_wait()
        remote = s3.storage(bucket, "pg")
        assert remote.exists(f"base/{record['name']}.json")
        listed = json.loads(cli(env, "list", "--json").stdout)
        (row,) = [r for r in listed if r["kind"] == "base"]
        assert row["name"] == record["name"] and row["locations"] == ["local", "offsite"]
        pushed = [k for k in remote.list("wal") if k.endswith(".zst.age")]
        assert pushed and all(db.repo.exists(k) for k in pushed)
        plain = db.repo.read_bytes(pushed[0])
        assert plain.startswith(b"age-encryption.org/v1\n")

        # The local copies are gone: base backup and WAL come from the bucket, decrypted.
        shutil.rmtree(db.repo.root / "wal")
        (db.repo.root / "base" / record["file"]).unlink()
        target_dir = new_target_dir()
        argv = ["restore", "--pitr", "--to-end", "--target-dir", str(target_dir), "--json"]
        argv += ["--command", server_command(), "--keep-running"]
        if RUN_AS is not None:
            argv += ["--server-user", RUN_AS]
        missing_key = cli(env, *argv)
        assert missing_key.returncode == 2, missing_key.stderr
        assert "no key is configured" in missing_key.stderr
        shutil.rmtree(target_dir.parent, ignore_errors=True)
        target_dir = new_target_dir()
        argv[argv.index("--target-dir") + 1] = str(target_dir)
        keyed = env | {"SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(identity)}
        restored = cli(keyed, *argv)
        try:
            assert restored.returncode == 0, restored.stderr
            result = json.loads(restored.stdout)
            assert result["read_from"] == "offsite"
            assert batches(target_dir, int(result["port"])) == [(1, 1000)]
        finally:
            pitr_restore.stop(server(db.cluster.bin_dir, int(result["port"])), target_dir)
            shutil.rmtree(target_dir.parent, ignore_errors=True)
    shutil.rmtree(keys, ignore_errors=True)


def test_a_server_killed_while_archiving_loses_nothing_acknowledged() -> None:
    """Commits run while the postmaster is killed with SIGKILL; after a restart (crash recovery)
    and the archive catching up, recovery from the archive has every acknowledged commit."""
    with archiving_cluster() as db:
        db.sql("CREATE TABLE acked (id int PRIMARY KEY, pad text)")
        pitr.base_backup(db.target, db.repo, quiet)
        acknowledged: list[int] = []
        stop = threading.Event()

        errors: list[BaseException] = []

        def writer() -> None:
            try:
                with connect(db.target, "postgres", autocommit=True) as conn:
                    for number in range(1, 1_000_000):
                        if stop.is_set():
                            return
                        conn.execute("INSERT INTO acked VALUES (%s, repeat('x', 2000))", (number,))
                        acknowledged.append(number)  # only after the server said COMMIT
                        if number % 500 == 0:
                            conn.execute("SELECT pg_switch_wal()")  # keep archiving busy
            except psycopg.OperationalError:
                return  # the server died under us: what was acknowledged is in the list
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(3.0)
        pid = int((db.cluster.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # our own cluster's postmaster, by its PID
        stop.set()
        thread.join(30)
        assert not errors and len(acknowledged) > 100, errors
        deadline = time.monotonic() + 30
        while (db.cluster.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the children notice the postmaster is gone and exit
        log = str(db.cluster.root / "server.log")
        options = (  # as SandboxCluster.start gave them: the crashed server kept no options
            f"-p {db.cluster.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={db.cluster.root} -c fsync=off -c full_page_writes=off"
        )
        db.cluster._run(
            "pg_ctl", "-D", str(db.cluster.data), "-o", options, "-l", log, "-w", "start"
        )
        assert "database system was interrupted" in (db.cluster.root / "server.log").read_text()
        db.switch_and_wait()

        result = restore(db, Target())
        try:
            with psycopg.connect(
                host=str(result.target_dir), port=result.port, user="postgres"
            ) as conn:
                present = {row[0] for row in conn.execute("SELECT id FROM acked")}
            assert set(acknowledged) <= present
        finally:
            pitr_restore.stop(server(db.cluster.bin_dir, result.port), result.target_dir)
            shutil.rmtree(result.target_dir.parent, ignore_errors=True)
        (_base, report), *_ = pitr.check(wal.WalArchive(db.repo))
        assert report is not None and report.ok, report


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
