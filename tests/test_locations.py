"""Copies to an S3 location (a real SeaweedFS on loopback): automatic after a backup, listed,
and used by restore when the local copy is missing or damaged, or with --from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, fingerprint


@pytest.fixture
def offsite(s3: SandboxS3, tmp_path: Path) -> dict[str, str]:
    """Environment for the CLI: a config file naming the location, and its credentials."""
    bucket = s3.bucket()
    config = tmp_path / "safehold.toml"
    config.write_text(
        f'[locations.offsite]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\nprefix = "host-a"\n'
    )
    return {
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_backups_are_copied_listed_and_restored_from_the_copy(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, s3: SandboxS3, offsite: dict[str, str]
) -> None:
    before = fingerprint(db)
    made = run_cli("backup", "--json", env=offsite)
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["artifact"]
    remote = s3.storage(_bucket(offsite), "host-a")
    assert remote.size(name) == repo.size(name)
    assert remote.exists(f".safehold/manifests/{name}.json")

    status = json.loads(run_cli("status", "--json", env=offsite).stdout)
    assert status["targets"][0]["reasons"] == [] and status["level"] == "ok"
    listed = json.loads(run_cli("list", "--json", env=offsite).stdout)
    assert listed[0]["locations"] == ["local", "offsite"]
    again = run_cli("copy", "--to", "offsite", "--json", env=offsite)
    assert again.returncode == 0, again.stderr
    globals_name = json.loads(made.stdout)["facts"]["globals"]
    assert json.loads(again.stdout)[0]["skipped"] == [globals_name, name]  # the globals travel too

    # Verify and drill read the bucket's copy (into scratch space), not the local one.
    checked = run_cli("verify", "--from", "offsite", "--level", "full", "--json", env=offsite)
    assert checked.returncode == 0, checked.stderr
    assert [(r["artifact"], r["outcome"]) for r in json.loads(checked.stdout)] == [
        (name, "ok"),
        (globals_name, "ok"),
    ]
    drilled = run_cli("drill", "--from", "offsite", "--json", env=offsite)
    assert drilled.returncode == 0, drilled.stderr
    assert json.loads(drilled.stdout)["subject"].endswith("(from offsite)")
    assert len(list(repo.path(".safehold/drills").iterdir())) == 1
    good = remote.read_bytes(name)
    remote.put_bytes(name, good[:100] + bytes([good[100] ^ 1]) + good[101:])
    bad = run_cli("verify", "--from", "offsite", name, env=offsite)
    assert bad.returncode == 6 and "sha256" in bad.stderr
    remote.put_bytes(name, good)

    remote.delete(f".safehold/manifests/{name}.json")  # as if never copied
    remote.delete(name)
    behind = json.loads(run_cli("status", "--json", env=offsite).stdout)
    assert behind["targets"][0]["reasons"] == ["newest backup not copied to offsite"]
    assert run_cli("copy", "--to", "offsite", env=offsite).returncode == 0

    # The local copy is damaged: restore falls back to the copy in the bucket.
    path = repo.path(name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    restored = run_cli("restore", "--database", "latest", "--target-db", "from_copy", env=offsite)
    assert restored.returncode == 0, restored.stderr
    assert "read from location offsite" in restored.stderr
    assert fingerprint(db, "from_copy") == before

    # The local copy is gone: --from reads it from the location by name.
    path.unlink()
    named = run_cli(
        "restore",
        "--database",
        name,
        "--from",
        "offsite",
        "--target-db",
        "from_named",
        env=offsite,
    )
    assert named.returncode == 0, named.stderr
    assert fingerprint(db, "from_named") == before

    # Retention runs per location: the bucket's copy is judged on its own.
    pruned = run_cli("prune", "--dry-run", "--json", env=offsite)
    assert pruned.returncode == 0, pruned.stderr
    local, bucket = json.loads(pruned.stdout)
    assert not local["location"].startswith("s3://") and bucket["location"].startswith("s3://")
    assert [b["name"] for b in bucket["backups"] if b["keep"]] == [globals_name, name]


def test_unknown_location_and_copy_of_nothing(run_cli: CliRunner, offsite: dict[str, str]) -> None:
    unknown = run_cli("copy", "--to", "nowhere", env=offsite)
    assert unknown.returncode == 2 and "no location named 'nowhere'" in unknown.stderr
    assert "offsite" in unknown.stderr
    empty = run_cli("copy", "--to", "offsite", env=offsite)
    assert empty.returncode == 2 and "no good backup to copy" in empty.stderr


def _bucket(env: dict[str, str]) -> str:
    text = Path(env["SAFEHOLD_CONFIG"]).read_text()
    return text.split('bucket = "')[1].split('"')[0]
