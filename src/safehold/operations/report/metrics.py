"""A status reading in Prometheus text format, for node_exporter's textfile collector (written
atomically: the collector never reads half a file) or the daemon's metrics endpoint.

Names follow Prometheus' conventions (docs/reference/metrics-changes.md has the renames):
``safehold_`` first, base units last (``_seconds``, ``_bytes``), times as
``_timestamp_seconds``, what a value is about in labels (``kind``, ``target``), never in the
name. There is no age: a file is read long after it was written, and an age written into it
would stay frozen while the real age grows; ``time() - safehold_last_success_timestamp_seconds``
is the age whenever Prometheus evaluates it.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from ..pitr.status import LEVELS
from .runs import RunsStatus
from .status import StatusReport

LABELS = ("kind", "target")


def registry_for(report: StatusReport, runs: RunsStatus | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()

    def gauge(name: str, text: str, labels: tuple[str, ...] = LABELS) -> Gauge:
        return Gauge(f"safehold_{name}", text, labels, registry=registry)

    last = gauge("last_success_timestamp_seconds", "start of the newest good backup")
    size = gauge("backup_size_bytes", "size of the newest good backup")
    took = gauge("backup_duration_seconds", "how long the newest good backup took")
    count = gauge("backups", "good backups in the repository")
    verified = gauge("verify_ok", "1 when the newest backup's last verify passed, else 0")
    verified_at = gauge("verify_timestamp_seconds", "when the newest backup was last verified")
    drilled = gauge("drill_ok", "1 when the last drill covering the target passed, else 0")
    drilled_at = gauge("drill_timestamp_seconds", "when the last drill covering it ran")
    rto = gauge("drill_recovery_seconds", "measured restore time in the last drill")
    level = gauge("status", "0 ok, 1 warning, 2 critical")
    for target in report.targets:
        labels = (target.kind, target.target)
        level.labels(*labels).set(LEVELS.index(target.level))
        count.labels(*labels).set(target.good_backups)
        newest = target.newest
        if newest is not None:
            last.labels(*labels).set(newest.created.timestamp())
            size.labels(*labels).set(newest.size or 0)
            if newest.manifest is not None:
                took.labels(*labels).set(newest.manifest.duration_s)
        if target.verify is not None:
            verified.labels(*labels).set(1 if target.verify.ok else 0)
            verified_at.labels(*labels).set(target.verify.checked_at.timestamp())
        if target.drill is not None:
            drilled.labels(*labels).set(1 if target.drill_s is not None else 0)
            drilled_at.labels(*labels).set(target.drill.started_at.timestamp())
            if target.drill_s is not None:
                rto.labels(*labels).set(target.drill_s)
    pitr = report.wal
    if pitr is not None:
        if pitr.archived_at is not None:
            gauge("wal_last_archived_timestamp_seconds", "when the newest WAL file was archived",
                  ()).set(pitr.archived_at.timestamp())  # fmt: skip
        if pitr.newest_base is not None:
            gauge("base_backup_last_timestamp_seconds", "start of the newest base backup",
                  ()).set(pitr.newest_base.started.timestamp())  # fmt: skip
        gauge("wal_status", "PITR: 0 ok, 1 warning, 2 critical (stalled)", ()).set(
            LEVELS.index(pitr.level)
        )
    overall = gauge("status_overall", "worst status of all targets", ())
    overall.set(LEVELS.index(report.level))
    checked = gauge("status_timestamp_seconds", "when this reading was taken", ())
    checked.set(report.checked_at.timestamp())
    if runs is not None:
        gauge("runs_status", "0 ok, 1 a command's last run failed", ()).set(
            LEVELS.index(runs.level)
        )
    return registry


def write_metrics(report: StatusReport, path: Path, runs: RunsStatus | None = None) -> None:
    write_to_textfile(str(path), registry_for(report, runs))


def render_metrics(report: StatusReport) -> bytes:
    return generate_latest(registry_for(report))
