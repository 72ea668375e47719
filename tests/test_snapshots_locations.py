"""The chunk store in S3 locations (a real SeaweedFS on loopback): written straight to a bucket
as its primary (nothing staged on local disk), mirrored to another location after each backup,
a damaged pack found by verify and named with the snapshots and files it hurts, the restore
reading that pack from the mirror instead, and a new host restoring from a location alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold.chunkstore.inventory import stored_packs
from safehold.chunkstore.layout import pack_key
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage
from safehold.storage.s3 import S3Storage

from .conftest import CliRunner
from .test_snapshots_cli import _keys, _ok
from .tree_support import MiB, snapshot


def _config(path: Path, s3: SandboxS3, buckets: dict[str, str], primary: str | None) -> Path:
    lines = [f'chunk_location = "{primary}"'] if primary else []
    text = "[backup]\n" + "\n".join(lines) + "\n"
    for name, bucket in buckets.items():
        text += f'[locations.{name}]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\n'
        text += f'prefix = "app"\ncopy_after_backup = {"false" if name == primary else "true"}\n'
    path.write_text(text)
    return path


def s3_env(s3: SandboxS3, config: Path) -> dict[str, str]:
    """The CLI environment for the config file ``config`` and the server's credentials."""
    return {
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def places(s3: SandboxS3, tmp_path: Path) -> tuple[dict[str, str], dict[str, S3Storage]]:
    """The CLI environment for a store whose primary is the bucket 'primary', mirrored to
    'offsite'; and the two storages as the test reads them."""
    buckets = {"primary": s3.bucket(), "offsite": s3.bucket()}
    config = _config(tmp_path / "safehold.toml", s3, buckets, "primary")
    env = s3_env(s3, config)
    return env, {name: s3.storage(bucket, "app") for name, bucket in buckets.items()}


def _tree(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    for n in range(6):  # several data packs (packs are 16 MiB): one can be damaged alone
        (root / "docs" / f"part-{n}.bin").write_bytes(_noise(n, 7 * MiB))
    (root / "small.txt").write_text("small file\n")
    return root


def _noise(seed: int, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def test_a_bucket_primary_mirror_fallback_and_a_new_host(
    run_cli: CliRunner,
    repo: LocalStorage,
    tmp_path: Path,
    s3: SandboxS3,
    places: tuple[dict[str, str], dict[str, S3Storage]],
) -> None:
    base, stores = places
    writer, reader = _keys(run_cli, tmp_path)
    writer, reader = {**base, **writer}, {**base, **reader}
    source = _tree(tmp_path / "app-data")
    made = json.loads(_ok(run_cli("backup", "--path", str(source), "--json", env=writer)).stdout)
    snap = made[0]["snapshot"]

    # Written straight to the bucket: the local disk holds only the id key and caches.
    assert not (repo.root / "chunks").exists()
    primary, offsite = stores["primary"], stores["offsite"]
    assert primary.exists(f"chunks/snapshots/{snap}")
    assert offsite.exists(f"chunks/snapshots/{snap}")  # the automatic copy
    assert stored_packs(offsite) == stored_packs(primary)
    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=writer)).stdout)
    assert [s["snapshot"] for s in listed] == [snap]

    # Damage one data pack in the primary: verify names it, the snapshot and the files.
    packs = sorted(stored_packs(primary), key=lambda p: -primary.size(pack_key(p)))
    bad = packs[0]
    data = bytearray(primary.read_bytes(pack_key(bad)))
    data[len(data) // 2] ^= 0xFF
    primary.put_bytes(pack_key(bad), bytes(data))
    checked = run_cli("snapshots", "verify", "--read-data", "100", "--json", env=reader)
    assert checked.returncode == 6, checked.stderr
    report = json.loads(checked.stdout)
    assert report["affected"] == {bad: [snap]}
    count, paths = report["files"][snap]
    assert count >= 1 and all(p.startswith("docs/part-") for p in paths)

    # The restore reads that pack from the mirror, says so, and the tree is whole.
    whole = tmp_path / "restored"
    done = _ok(run_cli("snapshots", "restore", snap, "--to", str(whole), env=reader))
    assert f"read pack {bad} from offsite" in done.stderr
    assert snapshot(whole, exact=True) == snapshot(source, exact=True)

    # A new host: an empty BACKUP_DIR, only the offsite location configured, the identity.
    new = tmp_path / "new-host"
    new.mkdir()
    config = _config(new / "safehold.toml", s3, {"offsite": offsite.bucket}, None)
    env = {**reader, "SAFEHOLD_CONFIG": str(config), "BACKUP_DIR": str(new / "backups")}
    env["SAFEHOLD_FORMAT"] = "chunked"
    again = new / "restored"
    done = _ok(run_cli("snapshots", "restore", snap, "--to", str(again), env=env))
    assert "reading it from offsite" in done.stderr
    assert snapshot(again, exact=True) == snapshot(source, exact=True)

    # With the pack damaged in both places the restore fails, naming both, and leaves nothing.
    offsite.delete(pack_key(bad))
    failed = run_cli("snapshots", "restore", snap, "--to", str(tmp_path / "never"), env=reader)
    assert failed.returncode == 6, failed.stderr
    assert bad in failed.stderr and "no mirror has a good copy" in failed.stderr
    assert not (tmp_path / "never").exists()
    assert not list(tmp_path.glob("never*")) and not list(tmp_path.glob(".never*"))


def test_copy_to_a_location_is_incremental_and_refuses_another_store(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, s3: SandboxS3
) -> None:
    bucket = s3.bucket()
    config = _config(tmp_path / "safehold.toml", s3, {"offsite": bucket}, None)
    text = config.read_text().replace("copy_after_backup = true", "copy_after_backup = false")
    config.write_text(text)
    env = s3_env(s3, config)
    writer = {**env, **_keys(run_cli, tmp_path)[0]}
    source = tmp_path / "data"
    source.mkdir()
    (source / "a.txt").write_text("one\n")
    _ok(run_cli("backup", "--path", str(source), env=writer))
    offsite = s3.storage(bucket, "app")
    assert not offsite.exists("chunks/config")  # copy_after_backup = false

    first = json.loads(
        _ok(run_cli("snapshots", "copy", "--to", "offsite", "--json", env=writer)).stdout
    )
    assert len(first[0]["snapshots"]) == 1 and first[0]["packs"] >= 1
    (source / "b.txt").write_text("two\n")
    _ok(run_cli("backup", "--path", str(source), env=writer))
    second = json.loads(
        _ok(run_cli("snapshots", "copy", "--to", "offsite", "--json", env=writer)).stdout
    )
    assert len(second[0]["snapshots"]) == 1 and second[0]["already"] == 1
    local = LocalStorage(repo.root)
    for key in ("chunks/config", "chunks/keys/id-key.age"):
        assert offsite.read_bytes(key) == local.read_bytes(key)
    assert stored_packs(offsite) == stored_packs(local)

    # Another repository's store is never merged into that location.
    other = tmp_path / "other"
    other_writer, _ = _keys(run_cli, other)
    other_env = {**env, **other_writer, "BACKUP_DIR": str(other / "backups")}
    _ok(run_cli("backup", "--path", str(source), env=other_env))
    refused = run_cli("snapshots", "copy", "--to", "offsite", env=other_env)
    assert refused.returncode == 6 and "holds another chunk store" in refused.stderr
    assert len(offsite.list("chunks/snapshots")) == 2
