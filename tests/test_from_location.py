"""A new host restores from a location alone: the config file (an encrypted S3 location), the
key file and an empty BACKUP_DIR; real PostgreSQL, Docker and S3 (SeaweedFS)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog, naming
from safehold.crypto import generate_keypair
from safehold.model import Event
from safehold.operations.copy import Location, copy_backups, fetch, mirror
from safehold.operations.pitr import restore as pitr_restore
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage, Storage

from .conftest import CliRunner, execute, fingerprint, run_in, seed_env
from .pitr_support import (
    RUN_AS,
    archiving_cluster,
    batches,
    give_to_server,
    insert_batch,
    new_target_dir,
    server,
    server_command,
    shared_folder,
)

FILL = (
    "mkdir -p /data/sub && echo original > /data/a.txt && echo deep > /data/sub/b.txt "
    "&& ln -s a.txt /data/link && chmod 0640 /data/a.txt"
)
READ = "cd /data && find . | sort && ls -ln a.txt link sub/b.txt && cat a.txt sub/b.txt"


@dataclass
class Offsite:
    env: dict[str, str]  # the old host's environment: config file with the location
    fresh: Path  # the new host's BACKUP_DIR, not created yet
    remote: Storage
    config: Path

    def new_host(self, **more: str) -> dict[str, str]:
        return {**self.env, "BACKUP_DIR": str(self.fresh), **more}


def write_config(path: Path, s3: SandboxS3, identity: Path, public: str, names: list[str]) -> str:
    credentials = path.parent / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    bucket = s3.bucket()
    text = f'[encryption]\nrecipients = ["{public}"]\nidentity_file = "{identity}"\n'
    if not public:  # the passphrase comes from the environment
        text = ""
    for name in names:
        text += (
            f'\n[locations.{name}]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\n'
            f'prefix = "{name}"\nregion = "us-east-1"\ncredentials_file = "{credentials}"\n'
        )
    path.write_text(text)
    return bucket


@pytest.fixture
def offsite(s3: SandboxS3, tmp_path: Path) -> Offsite:
    (tmp_path / "etc").mkdir()  # not the working folder: only SAFEHOLD_CONFIG names it
    identity = tmp_path / "etc" / "key.txt"
    public = generate_keypair(identity)
    config = tmp_path / "etc" / "safehold.toml"
    bucket = write_config(config, s3, identity, public, ["offsite"])
    return Offsite(
        {"SAFEHOLD_CONFIG": str(config)},
        tmp_path / "new-host" / "backups",
        s3.storage(bucket, "offsite"),
        config,
    )


def objects(storage: Storage) -> dict[str, bytes]:
    """Every key in a location with its content (a re-upload would show as a change only by
    time, so the tests also read the copy results)."""
    return {key: storage.read_bytes(key) for key in storage.list()}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args], env=env, capture_output=True, text=True
    )


def ok(result: object) -> None:
    assert getattr(result, "returncode", None) == 0, getattr(result, "stderr", result)


def test_database_restores_on_a_new_host_from_the_location(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, offsite: Offsite
) -> None:
    before = fingerprint(db)
    made = run_cli("backup", "--json", env=offsite.env)
    ok(made)
    name = json.loads(made.stdout)["artifact"]
    assert name.endswith(".age") and offsite.remote.exists(name)
    host = offsite.new_host()

    listed = run_cli("list", "--from", "offsite", "--json", env=host)
    ok(listed)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["status"]) for r in rows if r["kind"] == "database"] == [(name, "ok")]
    assert not offsite.fresh.exists()  # listing a location writes nothing locally

    target = f"{db.dbname}_newhost"
    restored = run_cli(
        "restore", "--database", "latest", "--from", "offsite", "--target-db", target, env=host
    )
    ok(restored)
    assert fingerprint(db, target) == before

    local = json.loads(run_cli("list", "--json", env=host).stdout)
    assert [(r["name"], r["status"]) for r in local if r["kind"] == "database"] == [(name, "ok")]
    fresh = LocalStorage(offsite.fresh)
    assert fresh.read_bytes(name) == repo.read_bytes(name)
    companions = catalog.companions(catalog.read_manifest(repo, name))
    assert companions  # the dump's globals came with it, verified and with their manifest
    for companion in companions:
        assert fresh.read_bytes(companion) == repo.read_bytes(companion)
        assert {r.name: r.status for r in catalog.scan(fresh)}[companion] == "ok"
    assert (
        json.loads(fresh.read_bytes(f".safehold/manifests/{name}.json"))["sha256"]
        == (json.loads(repo.read_bytes(f".safehold/manifests/{name}.json"))["sha256"])
    )
    held = objects(offsite.remote)
    copied = run_cli("copy", "--to", "offsite", "--json", env=host)
    ok(copied)
    (result,) = json.loads(copied.stdout)
    assert result["copied"] == [] and name in result["skipped"]
    assert objects(offsite.remote) == held


def test_volume_restores_on_a_new_host_from_the_location(
    run_cli: CliRunner,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    offsite: Offsite,
) -> None:
    docker_env = {"DOCKER_HOST": engine.base_url}
    run_in(client, image, volume.name, FILL)
    original = run_in(client, image, volume.name, READ)
    made = run_cli("backup", "--volume", volume.name, "--json", env=offsite.env | docker_env)
    ok(made)
    (manifest,) = json.loads(made.stdout)
    volume.remove(force=True)  # the new host's engine has no such volume yet

    restored = run_cli(
        "restore",
        "--volume",
        f"{volume.name}:latest",
        "--from",
        "offsite",
        env=offsite.new_host(**docker_env),
    )
    ok(restored)
    assert run_in(client, image, volume.name, READ) == original
    fresh = LocalStorage(offsite.fresh)
    records = {r.name: r for r in catalog.scan(fresh)}
    assert records[manifest["artifact"]].status == "ok"
    assert records[manifest["artifact"]].manifest is not None
    copied = run_cli("copy", "--to", "offsite", "--json", env=offsite.new_host())
    ok(copied)
    assert json.loads(copied.stdout)[0]["copied"] == []


def test_a_whole_set_restores_on_a_new_host_from_the_location(
    run_cli: CliRunner,
    db: PgTarget,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    offsite: Offsite,
) -> None:
    docker_env = {"DOCKER_HOST": engine.base_url}
    run_in(client, image, volume.name, FILL)
    original = run_in(client, image, volume.name, READ)
    before = fingerprint(db)
    made = run_cli(
        "backup", "--all", "--volume", volume.name, "--json", env=offsite.env | docker_env
    )
    ok(made)
    backup_set = json.loads(made.stdout)
    assert offsite.remote.exists(f".safehold/sets/{backup_set['id']}.json")
    # The disaster: the data is gone (the new host's server and engine hold other content).
    execute(db, "DELETE FROM app.files WHERE id % 2 = 0")
    volume.remove(force=True)
    host = offsite.new_host(**docker_env)

    sets = run_cli("list", "--sets", "--from", "offsite", "--json", env=host)
    ok(sets)
    assert [(s["id"], s["status"]) for s in json.loads(sets.stdout)] == [(backup_set["id"], "ok")]
    restored = run_cli(
        "restore", "--all", "--from", "offsite", "--set", "latest", "--json", env=host
    )
    ok(restored)
    assert json.loads(restored.stdout)["set"] == backup_set["id"]
    assert fingerprint(db) == before
    assert run_in(client, image, volume.name, READ) == original

    fresh = LocalStorage(offsite.fresh)
    listed = json.loads(run_cli("list", "--sets", "--json", env=host).stdout)
    assert [(s["id"], s["status"]) for s in listed] == [(backup_set["id"], "ok")]
    records = {r.name: r for r in catalog.scan(fresh)}
    for member in backup_set["members"]:
        assert records[member].status == "ok" and records[member].manifest is not None
    held = objects(offsite.remote)
    copied = run_cli("copy", "--to", "offsite", "--json", env=host)
    ok(copied)
    (result,) = json.loads(copied.stdout)
    assert result["copied"] == [] and result["sets"] == []
    assert objects(offsite.remote) == held


def test_one_location_is_used_and_several_need_from(
    run_cli: CliRunner, db: PgTarget, offsite: Offsite, s3: SandboxS3, tmp_path: Path
) -> None:
    ok(run_cli("backup", env=offsite.env))
    host = offsite.new_host()

    listed = run_cli("list", "--json", env=host)
    ok(listed)
    assert "holds no backups: reading from location offsite, the only one configured" in (
        listed.stderr
    )
    assert sorted(r["kind"] for r in json.loads(listed.stdout)) == ["database", "globals"]
    checked = run_cli("verify", "--json", env=host)
    ok(checked)
    outcomes = sorted((r["kind"], r["outcome"]) for r in json.loads(checked.stdout))
    assert outcomes == [("database", "ok"), ("globals", "ok")]  # the dump and what it needs
    target = f"{db.dbname}_auto"
    restored = run_cli("restore", "--database", "latest", "--target-db", target, env=host)
    ok(restored)
    assert fingerprint(db, target) == fingerprint(db)

    several = tmp_path / "several" / "safehold.toml"
    several.parent.mkdir()
    public = generate_keypair(several.parent / "key.txt")
    write_config(several, s3, several.parent / "key.txt", public, ["offsite", "archive"])
    fresh = {"SAFEHOLD_CONFIG": str(several), "BACKUP_DIR": str(tmp_path / "other-host")}
    for argv in (["restore", "--database", "latest"], ["verify"], ["drill"]):
        refused = run_cli(*argv, env=fresh)
        assert refused.returncode == 2, refused.stderr
        assert "holds no backups and 2 locations are configured" in refused.stderr
        assert "add --from NAME" in refused.stderr and "offsite, archive" in refused.stderr
    warned = run_cli("list", env=fresh)
    ok(warned)
    assert "add --from NAME" in warned.stderr and "no backups in" in warned.stdout


def test_companions_travel_with_their_dump(
    run_cli: CliRunner, repo: LocalStorage, offsite: Offsite, tmp_path: Path
) -> None:
    """copy, fetch and mirror carry a dump's globals along, verified like the dump."""
    made = run_cli("backup", "--json")  # no location: its manifest gets the globals first
    ok(made)
    dump = json.loads(made.stdout)["artifact"]
    manifest = catalog.read_manifest(repo, dump)
    assert manifest is not None
    companion = naming.globals_artifact(dump)
    body = b"-- the globals script of " + dump.encode()
    repo.put_bytes(companion, body)
    catalog.write_manifest(
        repo,
        dataclasses.replace(
            manifest,
            artifact=companion,
            kind="globals",
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            blake3=None,
            facts={},
        ),
    )
    catalog.write_manifest(
        repo, dataclasses.replace(manifest, facts={**manifest.facts, "globals": companion})
    )
    place = Location("offsite", offsite.remote)

    result = copy_backups(repo, place, [dump])
    assert result.copied == [companion, dump]  # what the dump needs goes first
    assert offsite.remote.read_bytes(companion) == body

    fresh = LocalStorage(offsite.fresh)
    events: list[Event] = []
    assert fetch(fresh, [place], dump, events.append) == "offsite"
    assert fresh.read_bytes(companion) == body and fresh.read_bytes(dump) == repo.read_bytes(dump)
    assert {r.name: r.status for r in catalog.scan(fresh)} == {dump: "ok", companion: "ok"}

    scratch = LocalStorage(tmp_path / "mirror")
    mirror(offsite.remote, scratch, [dump])
    assert scratch.read_bytes(companion) == body

    # A damaged companion in the location is refused (never kept), the dump still comes.
    offsite.remote.put_bytes(companion, body[:-1] + b"X")
    again = LocalStorage(tmp_path / "third-host")
    events.clear()
    assert fetch(again, [place], dump, events.append) == "offsite"
    assert not again.exists(companion) and again.read_bytes(dump) == repo.read_bytes(dump)
    assert any(e.level == "warning" and companion in e.message for e in events)


def test_pitr_restores_on_a_new_host_from_an_encrypted_location(s3: SandboxS3) -> None:
    keys = shared_folder("safehold-keys-")
    identity = keys / "identity.txt"
    public = generate_keypair(identity)
    config = keys / "safehold.toml"
    bucket = write_config(config, s3, identity, public, ["offsite"])
    for path in (identity, keys / "credentials", config):
        give_to_server(path)
    new_host = shared_folder("safehold-new-host-") / "backups"
    with archiving_cluster(config) as db:
        env = seed_env(db.target, db.repo.root) | {"SAFEHOLD_CONFIG": str(config)}
        db.sql("CREATE TABLE items (batch int, n int)")
        made = cli(env, "backup", "--physical", "--json")
        ok(made)
        base = json.loads(made.stdout)["name"]
        insert_batch(db, 1)
        moment = insert_batch(db, 2)
        time.sleep(0.05)
        insert_batch(db, 3)
        db.switch_and_wait()
        remote = s3.storage(bucket, "offsite")
        assert remote.exists(f"base/{base}.json") and remote.list("wal")

        host = env | {"BACKUP_DIR": str(new_host)}
        listed = cli(host, "list", "--from", "offsite", "--json")
        ok(listed)
        assert [r["name"] for r in json.loads(listed.stdout) if r["kind"] == "base"] == [base]
        target_dir = new_target_dir()
        argv = ["restore", "--pitr", "--from", "offsite", "--to-time", moment.isoformat()]
        argv += ["--target-dir", str(target_dir), "--json", "--keep-running"]
        argv += ["--command", server_command()]
        if RUN_AS is not None:
            argv += ["--server-user", RUN_AS]
        restored = cli(host, *argv)
        port = int(json.loads(restored.stdout)["port"]) if restored.returncode == 0 else None
        try:
            ok(restored)
            result = json.loads(restored.stdout)
            assert result["base"] == base and result["read_from"] == "offsite"
            assert port is not None and batches(target_dir, port) == [(1, 1000), (2, 1000)]
        finally:
            if port is not None:
                pitr_restore.stop(server(db.cluster.bin_dir, port), target_dir)
            shutil.rmtree(target_dir.parent, ignore_errors=True)
    shutil.rmtree(new_host.parent, ignore_errors=True)
    shutil.rmtree(keys, ignore_errors=True)


def test_passphrase_mode_restores_on_a_new_host(
    run_cli: CliRunner, db: PgTarget, s3: SandboxS3, tmp_path: Path
) -> None:
    """The wrapped repository key comes with the first backup fetched."""
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "safehold.toml"
    bucket = write_config(config, s3, tmp_path / "none", "", ["offsite"])
    env = {
        "SAFEHOLD_CONFIG": str(config),
        "SAFEHOLD_ENCRYPTION_PASSPHRASE_ENV": "BACKUP_PASS",
        "BACKUP_PASS": "correct horse",
    }
    before = fingerprint(db)
    made = run_cli("backup", "--json", env=env)
    ok(made)
    assert json.loads(made.stdout)["encryption"]["mode"].startswith("passphrase")
    fresh = tmp_path / "new-host"
    target = f"{db.dbname}_pass"

    restored = run_cli(
        "restore",
        "--database",
        "latest",
        "--target-db",
        target,
        env=env | {"BACKUP_DIR": str(fresh)},
    )

    ok(restored)
    assert fingerprint(db, target) == before
    key = ".safehold/keys/repository-key.age"
    assert LocalStorage(fresh).read_bytes(key) == s3.storage(bucket, "offsite").read_bytes(key)
