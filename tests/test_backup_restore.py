"""Database round trips against a real PostgreSQL: what comes back is what was backed up."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path

import blake3
import pytest

from safehold import catalog, naming
from safehold.errors import IntegrityError, UsageError
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.database.restore import RestoreOptions, restore_database
from safehold.sandbox import SandboxCluster
from safehold.sources.postgres import PgTarget, connect, count_rows
from safehold.storage import LocalStorage

from .conftest import databases, execute, fingerprint


def mutate(target: PgTarget) -> None:
    """Changes an application might make after the backup: all must be undone by a restore."""
    execute(target, "DELETE FROM app.files WHERE id % 2 = 0")
    execute(target, "UPDATE app.users SET display = 'changed' WHERE id < 10")
    execute(target, "INSERT INTO public.audit_log (action) VALUES ('after-backup')")
    execute(target, "SELECT nextval('app.invoice_no')")
    execute(target, "CREATE TABLE app.late (x int)")


def test_backup_writes_a_committed_artifact(db: PgTarget, repo: LocalStorage) -> None:
    manifest = backup_database(db, repo)

    path = repo.path(manifest.artifact)
    assert naming.parse(manifest.artifact) is not None
    assert path.stat().st_mode & 0o777 == 0o600
    assert repo.root.stat().st_mode & 0o777 == 0o700
    manifest_file = repo.path(naming.manifest_key(manifest.artifact))
    assert manifest_file.stat().st_mode & 0o777 == 0o600
    stored = json.loads(manifest_file.read_text())
    assert stored["sha256"] == manifest.sha256
    assert stored["size"] == path.stat().st_size
    with connect(db) as conn:
        assert stored["facts"]["tables"] == count_rows(conn)
    assert stored["facts"]["tables"]["app.users"] == 120
    assert stored["facts"]["server_version_num"] >= 150000
    assert stored["facts"]["pg_dump_version"].startswith("pg_dump (PostgreSQL)")
    for link in naming.DB_LATEST_LINKS:
        assert repo.path(link).resolve() == path.resolve()
    listing = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA app users" in listing.stdout
    kind = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout
    assert "PostgreSQL custom database dump" in kind


def test_restore_over_live_brings_back_backup_content(db: PgTarget, repo: LocalStorage) -> None:
    at_backup = fingerprint(db)
    manifest = backup_database(db, repo)
    mutate(db)
    changed = fingerprint(db)
    assert changed != at_backup

    result = restore_database(db, repo, "latest")

    assert fingerprint(db) == at_backup
    previous = result.plan.previous
    assert previous is not None and previous.startswith(f"{db.dbname}_pre_restore_")
    assert fingerprint(db, previous) == changed  # the replaced database is kept, intact
    assert not [d for d in databases(db) if "staging" in d]
    assert result.tables == manifest.tables


def test_drop_previous_leaves_no_copy(db: PgTarget, repo: LocalStorage) -> None:
    backup_database(db, repo)
    result = restore_database(db, repo, "latest", RestoreOptions(drop_previous=True))
    assert result.plan.previous is not None
    assert result.plan.previous not in databases(db)
    assert db.dbname in databases(db)


def test_target_db_restores_side_by_side(db: PgTarget, repo: LocalStorage) -> None:
    at_backup = fingerprint(db)
    manifest = backup_database(db, repo)
    mutate(db)
    live = fingerprint(db)
    copy = f"{db.dbname}_copy"

    result = restore_database(db, repo, manifest.artifact, RestoreOptions(target_db=copy))

    assert result.plan.previous is None  # it did not exist: created
    assert fingerprint(db, copy) == at_backup
    assert fingerprint(db) == live  # the live database was not touched


def test_zstd_backup_round_trip_and_tool_compatibility(db: PgTarget, repo: LocalStorage) -> None:
    at_backup = fingerprint(db)
    manifest = backup_database(db, repo, BackupOptions(compression="zstd"))
    path = repo.path(manifest.artifact)
    assert manifest.artifact.endswith(".sql.zst")
    assert repo.path("db_backup_latest.sql.zst").resolve() == path.resolve()

    # Readable by the operator's own tools: zstd -dc FILE | pg_restore --list
    zstd = subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE)
    assert zstd.stdout is not None
    listing = subprocess.run(["pg_restore", "--list"], stdin=zstd.stdout, capture_output=True)
    zstd.stdout.close()  # our copy of the pipe, so zstd sees pg_restore stop reading
    zstd.wait(timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert b"TABLE DATA app files" in listing.stdout

    mutate(db)
    restore_database(db, repo, "latest")
    assert fingerprint(db) == at_backup
    assert not list((repo.root / naming.TMP_DIR).glob("*")), "decompressed temp file left behind"


def test_dry_run_changes_nothing(db: PgTarget, repo: LocalStorage) -> None:
    backup_database(db, repo)
    mutate(db)
    before, names = fingerprint(db), databases(db)

    result = restore_database(db, repo, "latest", dry_run=True)

    assert result.dry_run
    steps = result.plan.steps()
    assert any("staging" in s for s in steps) and any("rename" in s for s in steps)
    assert fingerprint(db) == before and databases(db) == names


def test_row_counts_come_from_the_dumped_snapshot(db: PgTarget, repo: LocalStorage) -> None:
    """Writes during the dump must change neither the dump nor the manifest's counts."""
    execute(
        db,
        "INSERT INTO public.audit_log (action, detail) SELECT 'bulk', "
        "md5(g::text) || repeat('x', 200) FROM generate_series(1, 150000) g",
    )
    stop = threading.Event()

    def writer() -> None:
        with connect(db, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO public.audit_log (action) VALUES ('during')")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        manifest = backup_database(db, repo, BackupOptions(compression="none"))
    finally:
        stop.set()
        thread.join()
    copy = f"{db.dbname}_snap"
    # restore checks the restored rows against the manifest's counts, table by table
    result = restore_database(db, repo, manifest.artifact, RestoreOptions(target_db=copy))
    assert result.tables == manifest.tables
    with connect(db) as conn:
        assert count_rows(conn)["public.audit_log"] > manifest.tables["public.audit_log"]


def test_listing_shows_foreign_files_and_hides_partials(db: PgTarget, repo: LocalStorage) -> None:
    manifest = backup_database(db, repo)
    foreign = repo.path("db_backup_20200101_000000.sql")
    shutil.copy(repo.path(manifest.artifact), foreign)
    (repo.root / f".db_backup_20990101_000000.sql.partial-{2**22 + 7}-abcd").write_bytes(b"x")
    (repo.root / "notes.txt").write_text("not a backup")

    records = {r.name: r for r in catalog.scan(repo)}

    assert set(records) == {manifest.artifact, manifest.facts["globals"], foreign.name}
    assert records[manifest.artifact].status == "ok"
    assert records[foreign.name].status == "unverified/foreign"
    # 'latest' never picks a file without a manifest, even a newer-looking one
    assert catalog.latest(records.values(), "database").name == manifest.artifact  # type: ignore[union-attr]


def test_two_backups_in_one_second_get_distinct_names(db: PgTarget, repo: LocalStorage) -> None:
    first = backup_database(db, repo)
    second = backup_database(db, repo)
    assert first.artifact != second.artifact
    assert [(r.kind, r.status) for r in catalog.scan(repo)] == [
        ("globals", "ok"),
        ("database", "ok"),
        ("globals", "ok"),
        ("database", "ok"),
    ]
    assert repo.path("db_backup_latest.sql").resolve().name == second.artifact


@pytest.mark.parametrize("ref_kind", ["name", "path", "link"])
def test_restore_accepts_name_path_and_latest_link(
    db: PgTarget, repo: LocalStorage, ref_kind: str
) -> None:
    manifest = backup_database(db, repo)
    ref = {
        "name": manifest.artifact,
        "path": str(repo.path(manifest.artifact)),
        "link": str(repo.path("db_backup_latest.sql")),
    }[ref_kind]
    result = restore_database(db, repo, ref, RestoreOptions(target_db=f"{db.dbname}_r"))
    assert result.plan.source.manifest is not None  # verified against its manifest
    assert result.plan.source.name == manifest.artifact
    assert Path(result.plan.source.path).name == manifest.artifact


def test_long_database_names_are_cut_to_the_identifier_limit() -> None:
    from safehold.sources.pg_admin import db_name_with_suffix

    name = db_name_with_suffix("ä" * 40, "_pre_restore_20241201_120000")
    assert len(name.encode()) <= 63
    assert name.endswith("_pre_restore_20241201_120000")
    assert name.startswith("ä")


def test_latest_means_the_newest_backup_of_this_database(
    db: PgTarget, repo: LocalStorage, pg: SandboxCluster
) -> None:
    own = backup_database(db, repo)
    other = pg.target.with_db("postgres")
    newer_foreign = backup_database(other, repo)  # newer, but of another database
    assert newer_foreign.started_at > own.started_at

    plan = restore_database(db, repo, "latest", dry_run=True).plan
    assert plan.source.name == own.artifact

    with pytest.raises(UsageError, match="no good backup of database 'nosuch'"):
        restore_database(db.with_db("nosuch"), repo, "latest", dry_run=True)


def test_a_broken_zstd_stream_is_refused_even_when_its_checksum_matches(
    db: PgTarget, repo: LocalStorage
) -> None:
    """A backup written bad (matching sha256, undecodable stream) must not reach pg_restore."""
    manifest = backup_database(db, repo, BackupOptions(compression="zstd"))
    path = repo.path(manifest.artifact)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\x00" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    digest, fast = hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest()
    rewritten = dataclasses.replace(manifest, sha256=digest, blake3=fast, size=len(data))
    catalog.write_manifest(repo, rewritten)
    live = fingerprint(db)

    with pytest.raises(IntegrityError, match="not a valid zstd stream"):
        restore_database(db, repo, manifest.artifact)

    assert fingerprint(db) == live
    assert not [d for d in databases(db) if "staging" in d]
