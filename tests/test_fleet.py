"""``status --fleet`` / ``report --fleet``: every host prefix of a bucket on one page (a real
SeaweedFS on loopback, real backups and a real drill made by the CLI with each host's config).

The server is the sandbox's, started here with an identity file (``-s3.config``): the hosts
write with the admin key, the fleet is read with a key that may list the bucket and read only
some hosts' prefixes, as the IAM policy of docs/guide/fleet.md, so a host it may not read is
a real access denial and any write would be one too."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.errors import ToolError
from safehold.model import Objectives
from safehold.operations.report.fleet import FleetReport, HostStatus
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage
from safehold.storage.s3 import S3Storage

from .conftest import CliRunner

READER = ("fleet-reader", "fleet-reader-secret")
READABLE = ("host-a", "host-b", "host-c", "photos")  # host-d: listed, never readable


class IdentityS3(SandboxS3):
    """The sandbox server with an identity file: the admin key pair and a fleet reader."""

    bucket_name = f"fleet-{secrets.token_hex(4)}"

    def argv(self) -> list[str]:
        config = self.root / "identities.json"
        reads = [f"Read:{self.bucket_name}/hosts/{host}/*" for host in READABLE]
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "fleet-reader",
                            "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                            "actions": [f"List:{self.bucket_name}", *reads],
                        },
                    ]
                }
            )
        )
        return [*super().argv(), f"-s3.config={config}"]


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[IdentityS3]:
    own = IdentityS3()
    try:
        own.start()
    except ToolError as exc:  # a failure, never a skip, when SeaweedFS is missing
        own.remove()
        pytest.fail(f"the sandbox S3 server (SeaweedFS) did not start: {exc}", pytrace=False)
    try:
        own.bucket(own.bucket_name)
        yield own
    finally:
        own.remove()


def _host_env(s3: IdentityS3, tmp: Path, host: str, extra: str = "") -> dict[str, str]:
    config = tmp / f"{host}.toml"
    config.write_text(
        f'{extra}[locations.offsite]\nendpoint = "{s3.endpoint}"\n'
        f'bucket = "{s3.bucket_name}"\nprefix = "hosts/{host}"\n'
    )
    return {
        "SAFEHOLD_CONFIG": str(config),
        "BACKUP_DIR": str(tmp / host),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _ok(ran: Any) -> Any:
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout) if ran.stdout.strip().startswith(("{", "[")) else ran.stdout


def _all_keys(storage: S3Storage) -> dict[str, str]:
    pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_status_and_report_of_a_fleet_of_three_hosts(
    run_cli: CliRunner, iam_s3: IdentityS3, tmp_path: Path
) -> None:
    s3 = iam_s3
    admin = s3.storage(s3.bucket_name)
    env = {
        "host-a": _host_env(s3, tmp_path, "host-a"),
        "host-b": _host_env(s3, tmp_path, "host-b"),
        "host-c": _host_env(s3, tmp_path, "host-c", "[objectives]\nrpo_hours = 6\n"),
    }
    # host-a: fresh database and folder backups.
    db_a = _ok(run_cli("backup", "--json", env=env["host-a"]))["artifact"]
    data = tmp_path / "app-data"
    data.mkdir()
    (data / "notes.txt").write_text("host-a's files\n")
    (vol_a,) = _ok(run_cli("backup", "--path", str(data), "--json", env=env["host-a"]))
    # host-b: its schedule stopped three days ago (its newest backup's record says so).
    db_b = _ok(run_cli("backup", "--json", env=env["host-b"]))["artifact"]
    key = f"hosts/host-b/.safehold/manifests/{db_b}.json"
    manifest = json.loads(admin.read_bytes(key))
    for moment in ("started_at", "finished_at"):
        then = datetime.fromisoformat(manifest[moment].replace("Z", "+00:00"))
        manifest[moment] = (then - timedelta(days=3)).isoformat()
    admin.put_bytes(key, json.dumps(manifest).encode())
    # host-c: a backup and a real drill, whose record goes to the location too.
    db_c = _ok(run_cli("backup", "--json", env=env["host-c"]))["artifact"]
    drilled = _ok(run_cli("drill", "--json", env=env["host-c"]))
    assert admin.exists(f"hosts/host-c/.safehold/drills/{drilled['id']}.json")
    # host-d: a repository the reader may list but not read; photos/: not a repository.
    admin.put_bytes("hosts/host-d/.safehold/manifests/db_backup_20250101_000000.sql.json", b"{}")
    admin.put_bytes("hosts/host-d/db_backup_20250101_000000.sql", b"dump")
    admin.put_bytes("hosts/photos/2024/beach.jpg", b"\xff\xd8 a photo")
    admin.put_bytes("elsewhere/.safehold/manifests/x.json", b"{}")  # outside hosts/

    reader = {**env["host-a"], "AWS_ACCESS_KEY_ID": READER[0], "AWS_SECRET_ACCESS_KEY": READER[1]}
    before = _all_keys(admin)
    text = run_cli("status", "--fleet", env=reader)
    print("\n$ safehold status --fleet\n" + text.stdout + text.stderr)
    as_json = run_cli("status", "--fleet", "--json", env=reader)
    assert as_json.returncode == text.returncode == 2, as_json.stderr  # host-b: CRITICAL
    fleet = json.loads(as_json.stdout)

    hosts = {h["host"]: h for h in fleet["hosts"]}
    assert sorted(hosts) == ["host-a", "host-b", "host-c", "host-d"]  # photos/ is not a host
    assert (fleet["level"], fleet["exit_code"], fleet["this_host"]) == ("critical", 2, "host-a")
    assert fleet["where"] == f"s3://{s3.bucket_name}/hosts/"
    a, b, c, d = (hosts[h] for h in ("host-a", "host-b", "host-c", "host-d"))
    assert a["level"] == "ok" and a["objectives_from"] == "repository"
    assert {(t["kind"], t["last_backup"], t["level"]) for t in a["targets"]} == {
        ("database", db_a, "ok"),
        ("volume", vol_a["artifact"], "ok"),
    }
    assert [t["rpo_s"] / 3600 for t in a["targets"]] == [24, 168]  # as its schedule backs up
    assert all(t["age_s"] < 600 for t in a["targets"])
    assert a["last_drill"] is None
    (tb,) = b["targets"]
    assert (b["level"], tb["last_backup"], tb["level"]) == ("critical", db_b, "critical")
    assert 3 * 86400 - 60 < tb["age_s"] < 3 * 86400 + 600
    assert tb["reasons"] == [
        f"newest backup is {tb['age_s'] / 3600:.1f} h old (RPO 24.0 h + 2.4 h grace)"
    ]
    (tc,) = c["targets"]
    assert (c["level"], tc["last_backup"], tc["rpo_s"]) == ("ok", db_c, 6 * 3600)  # its own RPO
    assert c["objectives"]["rpo_s"] == 6 * 3600
    assert c["last_drill"]["id"] == drilled["id"] and c["last_drill"]["outcome"] == "ok"
    assert c["last_drill"]["recovery_s"] == round(drilled["recovery_s"], 3)
    assert tc["last_drill"]["recovery_s"] == drilled["members"][0]["seconds"]
    assert d["level"] == "unknown" and d["targets"] == []
    assert "access denied" in d["error"] and "hosts/host-d/" in d["error"]
    print(
        f"fleet read in {fleet['read_s']}s: "
        + ", ".join(f"{h['host']} {h['read_s']}s ({h['keys']} objects)" for h in fleet["hosts"])
    )
    assert fleet["read_s"] < 10

    # The text says the same, host by host.
    lines = text.stdout.splitlines()
    assert lines[0].startswith("fleet: CRITICAL (4 host(s) in s3://")
    row = {h: next(line for line in lines if line.startswith(h)) for h in hosts}
    assert row["host-a"].startswith("host-a (this host)")
    assert "OK" in row["host-a"] and "CRITICAL" in row["host-b"] and "3 days" in row["host-b"]
    assert "OK" in row["host-c"] and " ok " in row["host-c"] and "6 h" in row["host-c"]
    assert "UNKNOWN" in row["host-d"]
    volume = next(line for line in lines if line.strip().startswith("volume app-data"))
    assert "168 h" in volume and "OK" in volume
    assert any(line.startswith("host-d: UNKNOWN: access denied") for line in lines)
    assert any(line.startswith("host-b database") and "h old" in line for line in lines)
    assert lines[-1] == "exit 2 (CRITICAL: the worst host)"

    page = tmp_path / "fleet.html"
    made = run_cli("report", "--fleet", "-o", str(page), "--json", env=reader)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["html"] == str(page)
    html = page.read_text()
    for host in hosts:
        assert f'<section id="host-{host}">' in html
    assert 'id="overall" class="badge big crit">CRITICAL<' in html and "photos" not in html
    assert "<script" not in html and db_b in html and drilled["id"] not in html
    # Read-only: the bucket is exactly as it was (no lock, no record), the reader cannot write.
    assert _all_keys(admin) == before


def test_fleet_level_is_the_worst_host_and_unknown_only_without_a_breach() -> None:
    now = datetime.now(UTC)

    def fleet(*levels: str) -> FleetReport:
        hosts = [HostStatus(f"h{i}", f"hosts/h{i}", lvl) for i, lvl in enumerate(levels)]  # type: ignore[arg-type]
        return FleetReport(now, "offsite", "b", "s3://b/hosts/", None, Objectives(), hosts)

    assert fleet("ok", "ok").exit_code == 0
    assert fleet("ok", "warning").exit_code == 1
    assert fleet("warning", "unknown").exit_code == 3
    assert fleet("unknown", "critical", "warning").exit_code == 2
    assert fleet().exit_code == 3  # no host found: nothing is known


def test_fleet_flags_are_checked(run_cli: CliRunner, repo: LocalStorage, tmp_path: Path) -> None:
    alone = run_cli("status", "--location", "offsite")
    assert alone.returncode == 3 and "add --fleet" in alone.stderr
    none = run_cli("status", "--fleet")
    assert none.returncode == 3 and "none is configured" in none.stderr
    metrics = run_cli("status", "--fleet", "--metrics-file", str(tmp_path / "m.prom"))
    assert metrics.returncode == 3 and "not with --fleet" in metrics.stderr
