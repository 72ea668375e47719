"""Encryption at rest through the whole tool: backup, list, verify, restore, drill, with X25519
recipients and with a passphrase; wrong or missing keys and tampering refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, execute, fingerprint


def keygen(run_cli: CliRunner, path: Path) -> str:
    made = run_cli("keygen", "--output", str(path))
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return made.stdout.strip()


def test_x25519_database_backup_restore_verify_and_drill(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    identity = tmp_path / "key.txt"
    public = keygen(run_cli, identity)
    assert public.startswith("age1")
    writer = {"SAFEHOLD_ENCRYPTION_RECIPIENTS": public}  # the backup host: public key only
    reader = {"SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(identity)}
    before = fingerprint(db)

    made = run_cli("backup", "--json", env=writer)

    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)
    name = manifest["artifact"]
    assert name.endswith(".sql.age")
    assert manifest["encryption"]["mode"] == "x25519"
    assert manifest["encryption"]["recipients"] == [public]
    data = repo.path(name).read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n") and b"PGDMP" not in data[:4096]
    assert repo.path("db_backup_latest.sql.age").resolve().name == name
    # The seed's name means the newest backup whatever its format (issue 11): 'safehold cat'.
    assert repo.path("db_backup_latest.sql").resolve().name == name
    if shutil.which("age"):
        plain = subprocess.run(
            ["age", "-d", "-i", str(identity), str(repo.path(name))], capture_output=True
        )
        assert plain.returncode == 0 and plain.stdout.startswith(b"PGDMP")

    assert run_cli("verify", name, env=writer).returncode == 0  # quick: no key needed
    nokey = run_cli("restore", "--database", "latest", "--target-db", "copy_nokey")
    assert nokey.returncode == 2 and "no key is configured" in nokey.stderr
    assert "copy_nokey" not in databases(db)
    full = run_cli("verify", name, "--level", "full", "--json", env=reader)
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)[0]["outcome"] == "ok"

    execute(db, "DELETE FROM app.files WHERE id % 3 = 0")
    restored = run_cli("restore", "--database", "latest", "--drop-previous", env=reader)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(db) == before
    drilled = run_cli("drill", "--json", env=reader)
    assert drilled.returncode == 0, drilled.stderr
    assert json.loads(drilled.stdout)["outcome"] == "ok"


def test_passphrase_folder_backup_round_trip_and_refusals(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "a.txt").write_text("secret content")
    (folder / "big.bin").write_bytes(bytes(range(256)) * 4000)
    env = {"SAFEHOLD_ENCRYPTION_PASSPHRASE_ENV": "BACKUP_PASS", "BACKUP_PASS": "correct horse"}

    made = run_cli("backup", "--path", str(folder), "--json", env=env)

    assert made.returncode == 0, made.stderr
    (manifest,) = json.loads(made.stdout)
    name = manifest["artifact"]
    assert name.endswith(".tar.gz.age") and manifest["encryption"]["mode"].startswith("passphrase")
    assert repo.exists(".safehold/keys/repository-key.age")
    assert b"secret content" not in repo.path(name).read_bytes()
    listed = json.loads(run_cli("list", "--json").stdout)
    assert listed[0]["encryption"]["mode"] == manifest["encryption"]["mode"]

    (folder / "a.txt").write_text("changed")
    # A set of --path folders restores in place (restore --all), no Docker needed.
    done = run_cli("backup", "--all", "--no-database", "--path", str(folder), "--json", env=env)
    assert done.returncode == 0, done.stderr
    (folder / "a.txt").write_text("changed again")
    set_id = json.loads(done.stdout)["id"]
    wrong = run_cli("restore", "--all", "--set", set_id, env={**env, "BACKUP_PASS": "nope"})
    assert wrong.returncode == 2, wrong.stderr
    assert "passphrase" in wrong.stderr
    assert (folder / "a.txt").read_text() == "changed again"
    back = run_cli("restore", "--all", "--set", set_id, env=env)
    assert back.returncode == 0, back.stderr
    assert (folder / "a.txt").read_text() == "changed"
    assert (folder / "big.bin").read_bytes() == bytes(range(256)) * 4000

    # A flipped byte: refused, nothing written.
    member = json.loads(done.stdout)["members"][0]
    path = repo.path(member)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    (folder / "a.txt").write_text("after tamper")
    tampered = run_cli("restore", "--all", "--set", set_id, env=env)
    assert tampered.returncode == 6, tampered.stderr
    assert (folder / "a.txt").read_text() == "after tamper"
