"""The PITR line of ``safehold status``: WAL freshness (the achieved RPO for PITR) against
``objectives.wal_stall_minutes``, the newest base backup, exit codes, the alert and the
Prometheus metrics, on a real database backup plus a WAL archive made with ``wal.push``."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from safehold.operations import wal
from safehold.operations.status_wal import read_wal_status
from safehold.storage import LocalStorage

from .conftest import CliRunner, webhook_receiver
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
