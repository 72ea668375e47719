"""The content restored is the backup named: a file copied over another backup's name, with
that backup's manifest (so size and sha256 agree), is damaged for every reader (list, restore,
cat, drill, copy), refused with exit 6, and ``latest`` falls back to another location's good
copy of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold import catalog, naming
from safehold.errors import IntegrityError
from safehold.model import Manifest
from safehold.operations.checks.drill import drill, read_drills
from safehold.operations.volumes.folder import restore_tree
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage, Storage
from safehold.storage.s3 import S3Storage

from .conftest import CliRunner, databases, execute, fingerprint

MORE_USERS = (
    "INSERT INTO app.users (email) "
    "SELECT 'more' || g || '@example.org' FROM generate_series(1, 25) g"
)


def _backup(run_cli: CliRunner, *args: str, env: dict[str, str] | None = None) -> str:
    made = run_cli("backup", "--json", *args, env=env)
    assert made.returncode == 0, made.stderr
    done = json.loads(made.stdout)
    return str((done[0] if isinstance(done, list) else done)["artifact"])  # --path: a list


def _swap(storage: Storage, old: str, new: str) -> None:
    """What a careless copy does: ``old``'s file and manifest under ``new``'s name."""
    storage.put_bytes(new, storage.read_bytes(old))
    old_manifest = storage.read_bytes(naming.manifest_key(old))
    storage.put_bytes(naming.manifest_key(new), old_manifest)


def _statuses(run_cli: CliRunner, env: dict[str, str] | None = None) -> dict[str, str]:
    listed = run_cli("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row["status"] for row in json.loads(listed.stdout)}


def test_an_older_dump_under_the_newest_name_is_damaged_for_every_reader(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage
) -> None:
    older_content = fingerprint(db)
    older = _backup(run_cli)
    execute(db, MORE_USERS)
    newer = _backup(run_cli)
    _swap(repo, older, newer)
    # Size and sha256 agree with the (copied) manifest: only the identity gives it away.
    assert repo.read_bytes(newer) == repo.read_bytes(older)

    assert {older: "ok", newer: "damaged"}.items() <= _statuses(run_cli).items()

    before = databases(db)
    named = run_cli("restore", "--database", newer, "--target-db", "ident_named")
    assert named.returncode == 6, named.stderr
    assert f"backup {newer} is damaged: its manifest names {older}" in named.stderr
    assert "hint:" in named.stderr
    assert databases(db) == before  # refused before anything was created

    # latest is the newest *good* backup: the older one, under its own name.
    restored = run_cli("restore", "--database", "latest", "--target-db", "ident_latest")
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(db, "ident_latest") == older_content

    shown = run_cli("cat", newer)
    assert shown.returncode == 6 and shown.stdout == ""
    assert "damaged" in shown.stderr

    checked = run_cli("verify", newer)
    assert checked.returncode == 6, checked.stderr

    with pytest.raises(IntegrityError, match=f"restore drill failed: backup {newer} is damaged"):
        drill(repo, newer, server=db, live_database=db.dbname)
    (recorded,) = read_drills(repo)
    assert recorded.outcome == "failed" and recorded.members[0]["artifact"] == newer
    assert databases(db) == before | {"ident_latest"}


def test_a_volume_backup_under_another_volumes_name_is_refused(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    first = tmp_path / "data"  # --path names the volume after the folder
    first.mkdir()
    (first / "file.txt").write_text("volume a, old")
    a_old = _backup(run_cli, "--path", str(first))
    (first / "file.txt").write_text("volume a, new")
    a_new = _backup(run_cli, "--path", str(first))
    assert catalog.scan(repo)[-1].name == a_new

    # The backup of volume "data" under volume "other"'s name is a lie about the target.
    b_name = a_new.replace("volume_data_", "volume_other_")
    repo.put_bytes(b_name, repo.read_bytes(a_old))
    manifest = json.loads(repo.read_bytes(f".safehold/manifests/{a_old}.json"))
    manifest["artifact"] = b_name  # even with its artifact field edited to match
    repo.put_bytes(f".safehold/manifests/{b_name}.json", json.dumps(manifest).encode())

    problem = catalog.identity_problem(b_name, Manifest.from_json(manifest))
    assert problem == "its manifest is of 'data', the name says 'other'"
    assert _statuses(run_cli)[b_name] == "damaged"
    shown = run_cli("cat", "--volume", "other", b_name)
    assert shown.returncode == 6 and "the name says 'other'" in shown.stderr
    with pytest.raises(IntegrityError, match="is damaged"):
        restore_tree(repo, b_name, tmp_path / "out", target_name="other")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    # An older volume backup under the newest name of the same volume: latest is the good one.
    _swap(repo, a_old, a_new)
    assert _statuses(run_cli)[a_new] == "damaged"
    latest = run_cli("cat", "--volume", "data", "latest")
    assert latest.returncode == 0, latest.stderr
    assert "volume a, old" in latest.stdout  # the older backup, read under its own name
    named = run_cli("cat", "--volume", "data", a_new)
    assert named.returncode == 6 and f"its manifest names {a_old}" in named.stderr


@pytest.fixture
def two_places(s3: SandboxS3, tmp_path: Path) -> tuple[dict[str, str], S3Storage, S3Storage]:
    """Two locations (prefixes of one bucket), each taking a copy of every backup."""
    bucket = s3.bucket()
    config = tmp_path / "safehold.toml"
    config.write_text(
        "".join(
            f'[locations.{name}]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\n'
            f'prefix = "{name}"\n'
            for name in ("first", "second")
        )
    )
    env = {
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return env, s3.storage(bucket, "first"), s3.storage(bucket, "second")


def test_latest_falls_back_to_the_next_locations_good_copy(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    two_places: tuple[dict[str, str], S3Storage, S3Storage],
) -> None:
    env, first, second = two_places
    older = _backup(run_cli, env=env)
    execute(db, MORE_USERS)
    newer_content = fingerprint(db)
    newer = _backup(run_cli, env=env)
    good = repo.read_bytes(newer)
    assert first.read_bytes(newer) == good == second.read_bytes(newer)

    _swap(repo, older, newer)
    _swap(first, older, newer)  # the first location's copy was overwritten the same way

    # A damaged local copy is not copied: the good copy in the second location stays.
    refused = run_cli("copy", "--to", "second", newer, env=env)
    assert refused.returncode == 6 and f"its manifest names {older}" in refused.stderr
    assert second.read_bytes(newer) == good

    restored = run_cli("restore", "--database", "latest", "--target-db", "ident_fb", env=env)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(db, "ident_fb") == newer_content
    assert "the copy in first failed" in restored.stderr
    assert f"{newer}: read from location second" in restored.stderr
    # The local repository holds the good copy again, with its own manifest.
    assert repo.read_bytes(newer) == good
    assert _statuses(run_cli, env)[newer] == "ok"
