"""The PITR line of ``safehold status``: WAL freshness (the achieved RPO for PITR) against
``objectives.wal_stall_minutes``, the newest base backup, exit codes, the alert and the
Prometheus metrics, on a real database backup plus a WAL archive made with ``wal.push``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import setup as pitr_setup
from safehold.operations.pitr.status import read_wal_status
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import free_port
from safehold.sources.postgres import connect
from safehold.storage import LocalStorage

from .conftest import CliRunner, execute, webhook_receiver
from .test_pitr_retention import push_files, seg, write_base


def age_archive(repo: LocalStorage, minutes: float) -> float:
    """Set every sidecar's mtime (when wal-push committed it) ``minutes`` back; returns it."""
    stamp = time.time() - minutes * 60
    for key in repo.list(wal.PREFIX):
        if key.endswith(".sha256"):
            os.utime(repo.path(key), (stamp, stamp))
    return stamp


def test_wal_status_states(repo: LocalStorage, tmp_path: Path) -> None:
    repo.ensure()
    now = datetime.now(UTC)
    assert read_wal_status(repo, now) is None  # no PITR at all: no line

    push_files(repo, [seg(1, 1), seg(1, 2), "00000002.history"], tmp_path / "spool")
    alone = read_wal_status(repo, now)
    assert alone is not None and (alone.level, alone.state) == ("warning", "no base backup")
    assert alone.newest_segment == seg(1, 2) and alone.files == 3
    assert alone.age_s is not None and alone.age_s < 60

    base = write_base(repo, f"{now - timedelta(hours=3):%Y-%m-%d %H:%M}", 1, 1)
    fresh = read_wal_status(repo, now, stall_s=600)
    assert fresh is not None and (fresh.level, fresh.state, fresh.reasons) == ("ok", "ok", [])
    assert fresh.newest_base == base and fresh.base_age_s is not None
    assert 3 * 3600 <= fresh.base_age_s <= 3 * 3600 + 60

    later = read_wal_status(repo, now + timedelta(minutes=11), stall_s=600)
    assert later is not None and (later.level, later.state) == ("warning", "stalled")
    assert "was archived 11 min ago (stalled after 10 min)" in later.reasons[0]
    stale = read_wal_status(repo, now + timedelta(minutes=21), stall_s=600)
    assert stale is not None and (stale.level, stale.state) == ("critical", "stalled")

    for key in repo.list(wal.PREFIX):
        repo.delete(key)
    empty = read_wal_status(repo, now)
    assert empty is not None and (empty.level, empty.state) == ("critical", "stalled")
    assert empty.reasons == ["base backups but no archived WAL: they cannot be recovered"]


def test_status_cli_shows_wal_and_a_stalled_archive_breaches(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    assert run_cli("backup").returncode == 0
    names = [seg(1, n) for n in range(1, 4)] + [f"{seg(1, 1)}.00000028.backup"]
    push_files(repo, names, tmp_path / "spool")
    started = datetime.now(UTC) - timedelta(hours=2)
    base = write_base(repo, f"{started:%Y-%m-%d %H:%M}", 1, 1)

    fresh = run_cli("status", "--json")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    line = json.loads(fresh.stdout)["wal"]
    assert (line["level"], line["state"], line["stall_after_s"]) == ("ok", "ok", 900.0)
    assert line["newest_segment"] == seg(1, 3) and line["archived_files"] == 4
    assert line["last_base_backup"] == base.name and line["base_start_segment"] == seg(1, 1)
    assert line["age_s"] < 120 and 7100 < line["base_age_s"] < 7300
    text = run_cli("status")
    assert text.returncode == 0
    assert f"wal: newest segment {seg(1, 3)}, last archived" in text.stdout
    assert f"newest base backup {base.name} (2.0 h old); ok" in " ".join(text.stdout.split())

    archived_at = age_archive(repo, 20)
    prom = tmp_path / "m.prom"
    stalled = run_cli("status", "--json", "--metrics-file", str(prom))
    assert stalled.returncode == 1, stalled.stdout + stalled.stderr
    report = json.loads(stalled.stdout)
    assert report["level"] == "warning" and report["targets"][0]["level"] == "ok"
    assert (report["wal"]["level"], report["wal"]["state"]) == ("warning", "stalled")
    assert "archived 20 min ago (stalled after 15 min)" in report["wal"]["reasons"][0]
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
        if not s.labels
    }
    assert abs(samples["safehold_wal_last_archived_timestamp_seconds"] - archived_at) < 1
    assert samples["safehold_base_backup_last_timestamp_seconds"] == base.started.timestamp()
    assert samples["safehold_wal_status"] == 1 and samples["safehold_status_overall"] == 1

    relaxed = run_cli("status", env={"SAFEHOLD_OBJECTIVES_WAL_STALL_MINUTES": "60"})
    assert relaxed.returncode == 0, relaxed.stdout

    age_archive(repo, 40)
    with webhook_receiver() as (url, received):
        critical = run_cli("status", env={"SAFEHOLD_ALERTS_WEBHOOK_URL": url})
    assert critical.returncode == 2, critical.stdout + critical.stderr
    assert "stalled" in critical.stdout
    (alert,) = received
    assert alert["what"] == "PITR: WAL stalled"
    assert "archived 40 min ago (stalled after 15 min)" in str(alert["message"])


@pytest.fixture(scope="module")
def failing_archiver() -> Iterator[SandboxCluster]:
    """A cluster of its own with archive_mode on, an archive_command that always fails, and a
    failure already counted in pg_stat_archiver."""
    cluster = SandboxCluster()
    cluster.start()
    try:
        settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": "false"}
        pitr_setup.apply_settings(cluster.target, settings)
        log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", log, "-m", "fast", "-w", "restart")
        execute(cluster.target, "CREATE TABLE t AS SELECT 1 AS x", "postgres")
        execute(cluster.target, "SELECT pg_switch_wal()", "postgres")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connect(cluster.target, "postgres", autocommit=True) as conn:
                row = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
            if row and row[0]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the archiver never failed")
        yield cluster
    finally:
        cluster.remove()


def test_a_failing_archiver_is_critical_although_the_repository_looks_fresh(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, failing_archiver: SandboxCluster
) -> None:
    """The issue's case: the repository's newest WAL file is seconds old, so the repository
    alone says "ok", while the server's archiver fails on every segment since."""
    assert run_cli("backup").returncode == 0
    push_files(repo, [seg(1, 1), seg(1, 2)], tmp_path / "spool")
    write_base(repo, f"{datetime.now(UTC) - timedelta(hours=1):%Y-%m-%d %H:%M}", 1, 1)

    # The test database's own server does not archive: the repository decides, "ok".
    quiet = run_cli("status", "--json")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    line = json.loads(quiet.stdout)["wal"]
    assert (line["state"], line["archiver"]["archive_mode"]) == ("ok", "off")

    server = {"DB_PORT": str(failing_archiver.port), "PGPASSWORD": failing_archiver.password}
    with webhook_receiver() as (url, received):
        failing = run_cli("status", "--json", env={**server, "SAFEHOLD_ALERTS_WEBHOOK_URL": url})
    assert failing.returncode == 2, failing.stdout + failing.stderr
    reading = json.loads(failing.stdout)
    assert reading["level"] == "critical" and reading["targets"][0]["level"] == "ok"
    line = reading["wal"]
    assert (line["level"], line["state"]) == ("critical", "failing")
    assert line["age_s"] < 120  # the repository's newest file is fresh all the same
    archiver = line["archiver"]
    assert archiver["failing"] and archiver["failed_count"] >= 1
    assert archiver["last_failed_wal"].startswith("0000000100000000000000")
    reason = line["reasons"][0]
    assert reason.startswith("the server's WAL archiver is failing: ")
    assert f"the last for {archiver['last_failed_wal']} at " in reason
    (alert,) = received
    assert alert["what"] == "PITR: WAL failing" and archiver["last_failed_wal"] in str(
        alert["message"]
    )
    shown = run_cli("status", env=server)
    assert shown.returncode == 2 and "status: CRITICAL" in shown.stdout
    assert "wal: server archiver (archive_mode on): 0 archived, " in shown.stdout
    assert "FAILING" in shown.stdout

    # The server cannot be reached: a note on the WAL line, the repository's reading stands.
    away = run_cli("status", "--json", env={"DB_PORT": str(free_port())})
    assert away.returncode == 0, away.stdout + away.stderr
    line = json.loads(away.stdout)["wal"]
    assert line["state"] == "ok" and line["archiver"] is None
    assert line["notes"][0].startswith("the server's archiver was not checked: cannot reach")


def test_a_failing_archiver_shows_with_nothing_archived_yet(
    run_cli: CliRunner, repo: LocalStorage, failing_archiver: SandboxCluster
) -> None:
    """Archiving that never worked leaves the repository without any WAL: the server's
    archiver is the only witness."""
    assert run_cli("backup").returncode == 0
    server = {"DB_PORT": str(failing_archiver.port), "PGPASSWORD": failing_archiver.password}
    result = run_cli("status", "--json", env=server)
    assert result.returncode == 2, result.stdout + result.stderr
    line = json.loads(result.stdout)["wal"]
    assert (line["state"], line["archived_files"], line["base_backups"]) == ("failing", 0, 0)
