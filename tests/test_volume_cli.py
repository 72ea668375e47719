"""Volumes through the command line and the seed scripts, on a private Docker engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT, CliRunner, run_in, seed_env

FILL = "mkdir -p /data/sub && echo original > /data/a.txt && echo deep > /data/sub/b.txt"
READ = "cd /data && find . | sort && cat a.txt sub/b.txt"


def test_volume_backup_and_seed_restore_round_trip(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    run_in(client, image, volume.name, FILL)
    original = run_in(client, image, volume.name, READ)

    result = run_cli("backup", "--volume", volume.name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    (manifest,) = json.loads(result.stdout)
    assert manifest["kind"] == "volume" and manifest["target"] == volume.name
    archive = repo.path(manifest["artifact"])
    names = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    )
    assert {"./a.txt", "./sub/b.txt"} <= set(names.stdout.split())

    run_in(client, image, volume.name, "echo changed > /data/a.txt && rm /data/sub/b.txt")
    relative = f"./backups/{archive.name}"
    restored = subprocess.run(
        [str(ROOT / "scripts" / "restore.sh"), "--volume", f"{volume.name}:{relative}"],
        env={**seed_env(db, repo.root), **env},
        cwd=repo.root.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    assert run_in(client, image, volume.name, READ) == original
    assert "previous content is kept" in restored.stdout

    listing = json.loads(run_cli("list", "--json").stdout)
    volume_backups = [r for r in listing if r["kind"] in ("volume", "safety")]
    # the backup, and the safety copy of the changed content (its own kind)
    assert sorted(r["kind"] for r in volume_backups) == ["safety", "volume"]
    assert all(r["status"] == "ok" for r in volume_backups)


def test_path_backup_and_database_together(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    (folder / "x").mkdir(parents=True)
    (folder / "x" / "f.bin").write_bytes(b"\x00\x01" * 1000)

    result = run_cli("backup", "--database", "--path", str(folder), "--json")

    assert result.returncode == 0, result.stderr
    kinds = sorted((m["kind"], m["target"]) for m in json.loads(result.stdout))
    assert kinds[0][0] == "database" and kinds[1] == ("volume", "uploads")
    assert list(repo.root.glob("volume_uploads_*.tar.gz"))
    assert (repo.root / "volume_uploads_latest.tar.gz").is_symlink()


def test_bad_volume_arguments_and_unreachable_engine(run_cli: CliRunner) -> None:
    bad = run_cli("restore", "--volume", "no-colon-here")
    assert bad.returncode == 2 and "NAME:FILE" in bad.stderr

    down = run_cli(
        "backup", "--volume", "user-data", env={"DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    assert down.returncode == 4, down.stderr
    assert "DOCKER_HOST" in down.stderr


def test_volume_restore_dry_run_prints_the_plan_and_changes_nothing(
    run_cli: CliRunner,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    run_in(client, image, volume.name, FILL)
    assert run_cli("backup", "--volume", volume.name, env=env).returncode == 0
    run_in(client, image, volume.name, "echo changed > /data/a.txt")
    changed = run_in(client, image, volume.name, READ)
    user = client.containers.run(
        image,
        ["sleep", "600"],
        volumes={volume.name: {"bind": "/data"}},
        network_mode="none",
        detach=True,
    )

    plan = run_cli("restore", "--volume", f"{volume.name}:latest", "--dry-run", env=env)
    planned = run_cli(
        "restore",
        "--volume",
        f"{volume.name}:latest",
        "--dry-run",
        "--stop-containers",
        "--json",
        env=env,
    )

    assert plan.returncode == 0, plan.stderr
    assert "plan (dry run, nothing changed)" in plan.stdout
    assert f"REFUSED: running containers use it: {user.name}" in plan.stdout
    (steps,) = json.loads(planned.stdout)["volumes"]
    assert steps["steps"][1] == f"stop {user.name}"
    assert any("safety backup" in s for s in steps["steps"])
    user.remove(force=True)
    assert run_in(client, image, volume.name, READ) == changed


def test_volume_round_trip_through_the_engine_api(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
) -> None:
    """backup.volume_access = api: what a remote engine gets (no host folder involved)."""
    env = {"DOCKER_HOST": engine.base_url, "SAFEHOLD_BACKUP_VOLUME_ACCESS": "api"}
    run_in(client, image, volume.name, FILL + " && ln -s sub/b.txt /data/link")
    original = run_in(client, image, volume.name, READ + " && ls -l /data/link")

    made = run_cli("backup", "--volume", volume.name, "--json", env=env)
    assert made.returncode == 0, made.stderr
    (manifest,) = json.loads(made.stdout)
    assert manifest["facts"]["source"] == f"Docker volume {volume.name} (engine API)"
    run_in(client, image, volume.name, "echo changed > /data/a.txt && touch /data/extra")
    restored = run_cli("restore", "--volume", f"{volume.name}:latest", env=env)

    assert restored.returncode == 0, restored.stderr
    assert run_in(client, image, volume.name, READ + " && ls -l /data/link") == original
    helpers = client.containers.list(all=True, filters={"label": "org.safehold.helper=true"})
    assert helpers == []
