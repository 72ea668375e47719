"""A chunk store in a bucket with S3 Object Lock (compliance mode, a real SeaweedFS on loopback):
backups, prune and restore work; no key is ever written twice; prune's deletions only hide
objects (delete markers) and never shorten the retention of the data they held."""

from __future__ import annotations

import json
from pathlib import Path

from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage

from .conftest import CliRunner
from .test_snapshots_cli import _keys, _ok, keep_last
from .test_snapshots_locations import _config, s3_env
from .tree_support import MiB, snapshot


def test_a_compliance_locked_bucket_holds_the_store_and_prune_never_shortens_retention(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, s3: SandboxS3
) -> None:
    bucket = "locked-" + tmp_path.name[-8:].lower().replace("_", "-")
    client = s3.storage(bucket).client
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    config = _config(tmp_path / "safehold.toml", s3, {"locked": bucket}, "locked")
    env = {
        **s3_env(s3, config),
        **keep_last(1),
    }
    writer, reader = _keys(run_cli, tmp_path)
    writer, reader = {**env, **writer}, {**env, **reader}
    source = tmp_path / "data"
    source.mkdir()
    (source / "old.bin").write_bytes(b"o" * (2 * MiB))
    _ok(run_cli("backup", "--path", str(source), env=writer))
    (source / "old.bin").unlink()
    (source / "new.bin").write_bytes(b"n" * (2 * MiB) + b"end")
    made = json.loads(_ok(run_cli("backup", "--path", str(source), "--json", env=writer)).stdout)
    taken = snapshot(source, exact=True)

    pruned = run_cli("snapshots", "prune", "--grace-minutes", "0", "--json", env=writer)
    report = json.loads(_ok(pruned).stdout)
    assert len(report["forgotten"]) == 1 and report["store"]["removed_packs"]

    # Every key was written once: one version each (deletions are markers on top of it).
    versions = client.list_object_versions(Bucket=bucket, Prefix="app/chunks/")
    written = [v["Key"] for v in versions.get("Versions", [])]
    assert len(written) == len(set(written)), "an object was written twice"
    hidden = {m["Key"] for m in versions.get("DeleteMarkers", [])}
    forgotten = f"app/chunks/snapshots/{report['forgotten'][0]}"
    assert forgotten in hidden
    # The locked data of what prune removed is still there, its retention untouched.
    (gone,) = [v for v in versions["Versions"] if v["Key"] == forgotten]
    head = client.head_object(Bucket=bucket, Key=forgotten, VersionId=gone["VersionId"])
    assert head["ObjectLockMode"] == "COMPLIANCE"

    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=writer)).stdout)
    assert [s["snapshot"] for s in listed] == [made[0]["snapshot"]]
    dest = tmp_path / "restored"
    _ok(run_cli("snapshots", "restore", made[0]["snapshot"], "--to", str(dest), env=reader))
    assert snapshot(dest, exact=True) == taken
    checked = run_cli("snapshots", "verify", "--read-data", "100", "--json", env=reader)
    assert json.loads(_ok(checked).stdout)["ok"]
