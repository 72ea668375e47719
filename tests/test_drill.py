"""Restore drills against a real PostgreSQL: scratch restores, checks, timing, cleanup, and
live data left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold.errors import IntegrityError
from safehold.operations.checks.drill import drill, read_drills
from safehold.operations.database.backup import backup_database
from safehold.operations.volumes.folder import backup_tree
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, fingerprint


def make_folder(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "sub").mkdir()
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    return root


def test_database_drill_restores_into_scratch_and_leaves_live_alone(
    db: PgTarget, repo: LocalStorage
) -> None:
    manifest = backup_database(db, repo)
    before_dbs = databases(db)
    before = fingerprint(db)

    record = drill(repo, "latest", server=db, live_database=db.dbname)

    assert record.outcome == "ok" and record.recovery_s > 0
    (member,) = record.members
    assert member["artifact"] == manifest.artifact
    assert member["rows"] == sum(manifest.tables.values()) > 0
    assert member["tables"] == len(manifest.tables)
    assert member["scratch"].startswith(f"{db.dbname}_safehold_drill_")
    assert databases(db) == before_dbs  # the scratch database is gone
    assert fingerprint(db) == before
    (stored,) = read_drills(repo)
    assert stored.id == record.id and stored.covers("database", db.dbname)


def test_volume_drill_checks_files_and_bytes_and_removes_its_scratch(
    repo: LocalStorage, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "appdata")
    manifest = backup_tree(folder, "appdata", repo)

    record = drill(repo, manifest.artifact, server=None)

    (member,) = record.members
    assert (member["files"], member["bytes"]) == (2, 5 + 256 * 40)
    assert member["files"] == manifest.facts["files"]
    assert not any(repo.path(".safehold/tmp").iterdir())


def test_a_damaged_backup_fails_the_drill_and_is_recorded(db: PgTarget, repo: LocalStorage) -> None:
    manifest = backup_database(db, repo)
    path = repo.path(manifest.artifact)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    before_dbs = databases(db)

    with pytest.raises(IntegrityError, match="restore drill failed"):
        drill(repo, manifest.artifact, server=db, live_database=db.dbname)

    (stored,) = read_drills(repo)
    assert stored.outcome == "failed" and "is damaged: blake3" in (stored.error or "")
    assert databases(db) == before_dbs


def test_drill_cli_with_a_sandbox_cluster_and_a_set(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "uploads")
    made = run_cli("backup", "--all", "--path", str(folder), "--json")
    assert made.returncode == 0, made.stderr
    set_id = json.loads(made.stdout)["id"]
    before_dbs = databases(db)

    result = run_cli("drill", "--set", "latest", "--sandbox", "--json")

    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["set_id"] == set_id and record["outcome"] == "ok"
    assert "throwaway cluster" in record["where"]
    assert {m["kind"] for m in record["members"]} == {"database", "volume"}
    assert databases(db) == before_dbs  # nothing was created on the live server
    text = run_cli("drill", "--json")
    assert text.returncode == 0, text.stderr
    assert len(read_drills(repo)) == 2
