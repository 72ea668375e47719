"""Full-system sets of snapshots: ``backup --all`` with chunked targets takes the database, a
volume and a folder as one set of snapshots, and ``restore --all`` exports that set and runs
the whole-system runbook on it (real PostgreSQL, a private Docker engine, a container using
the volume and answering health checks)."""

from __future__ import annotations

import json
from pathlib import Path

from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, fingerprint
from .test_snapshots_cli import _keys, _ok
from .test_system_restore import Service, service, status_of, wreck

__all__ = ["service"]  # the fixture, used by name


def test_a_set_of_snapshots_is_backed_up_and_restored_whole(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    service: Service,
    tmp_path: Path,
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    docker = {"DOCKER_HOST": engine.base_url}
    writer, reader = {**writer, **docker}, {**reader, **docker}
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "a.txt").write_text("kept\n")
    before = fingerprint(db)
    argv = ("backup", "--all", "--volume", service.volume, "--path", str(folder), "--json")
    made = json.loads(_ok(run_cli(*argv, env=writer)).stdout)
    set_id = made["id"]
    assert made["complete"] and len(made["members"]) == 3
    assert sorted(s["target"] for s in made["snapshots"]) == sorted(
        [f"database:{db.dbname}", f"volume:{service.volume}", "volume:uploads"]
    )
    assert not list(repo.root.glob("db_backup_2*")) and not list(repo.root.glob("volume_*"))
    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=writer)).stdout)
    assert {s["set"] for s in listed} == {set_id}

    wreck(db, service)
    (folder / "a.txt").write_text("changed\n")
    (folder / "junk").write_text("not in the backup\n")

    # A dry run exports nothing.
    plan = _ok(run_cli("restore", "--all", "--dry-run", env=reader))
    assert f"export snapshot set {set_id}" in plan.stdout
    assert not list(repo.root.glob("db_backup_2*"))

    done = run_cli(
        "restore",
        "--all",
        "--project",
        service.project,
        "--health-url",
        service.url,
        "--health-timeout",
        "60",
        "--json",
        env=reader,
    )
    report = json.loads(_ok(done).stdout)
    assert report["set"] == set_id
    assert fingerprint(db) == before
    assert (service.root / "www" / "health.txt").read_text() == "ok\n"
    assert (service.root / "orders.json").read_text() == '{"orders": [1, 2, 3]}\n'
    assert (folder / "a.txt").read_text() == "kept\n" and not (folder / "junk").exists()
    assert status_of(service.url) == 200
    record = json.loads(repo.path(f".safehold/sets/{set_id}.json").read_text())
    assert len(record["members"]) == 4  # the dump, its globals, the volume, the folder

    # A set is one format: chunked and file members together are refused before any work.
    mixed = {**writer, "SAFEHOLD_FORMAT": "files", "SAFEHOLD_BACKUP_CHUNKED_TARGETS": "database"}
    refused = run_cli("backup", "--all", "--volume", service.volume, env=mixed)
    assert refused.returncode == 2 and "one format" in refused.stderr
