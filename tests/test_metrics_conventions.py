"""The Prometheus metrics follow the naming conventions and stay true when written to a file.

The textfile collector serves a file for as long as it exists, so every value in it must stay
right after it was written: times as timestamps, never ages. The test writes two readings an
hour apart over the same backups: only the reading's own time may differ between them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from safehold.model import Objectives
from safehold.operations.checks.verify import verify_backup
from safehold.operations.report.metrics import write_metrics
from safehold.operations.report.status import read_status
from safehold.operations.volumes.folder import backup_tree
from safehold.scheduler.metrics import JobMetrics
from safehold.storage import LocalStorage

NAME = re.compile(r"safehold_[a-z][a-z0-9]*(_[a-z0-9]+)*")
UNITS = {"seconds", "bytes"}  # base units only
NOT_BASE = {"ms", "milliseconds", "minutes", "hours", "days", "kb", "mb", "gb", "kilobytes"}
TYPES = {"gauge", "counter", "histogram", "summary", "info", "stateset"}
READING_TIME = "safehold_status_timestamp_seconds"


def _break_conventions(family: Metric) -> list[str]:
    """What is wrong with one family's name, type and help (empty when nothing)."""
    name = family.name + ("_total" if family.type == "counter" else "")
    words = name.split("_")
    wrong = []
    if not NAME.fullmatch(name):
        wrong.append("not safehold_ and snake_case")
    if family.type not in TYPES or not family.documentation.strip():
        wrong.append("no TYPE or HELP")
    if (family.type == "counter") != name.endswith("_total"):
        wrong.append("_total is for counters, and every counter ends in it")
    unit = [w for w in words if w in UNITS]
    if set(words) & NOT_BASE or len(unit) > 1:
        wrong.append("not in base units")
    if unit and words[-2 if family.type == "counter" else -1] != unit[0]:
        wrong.append("the unit is not the last word")
    if "timestamp" in words and not name.endswith("_timestamp_seconds"):
        wrong.append("a time that is not _timestamp_seconds")
    if "age" in words:
        wrong.append("an age (frozen in a textfile; use a timestamp)")
    return [f"{name}: {why}" for why in wrong]


def _families(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def _samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_conventions_check_finds_what_is_wrong() -> None:
    bad = (
        "# HELP safehold_backup_age_seconds age\n# TYPE safehold_backup_age_seconds gauge\n"
        "# HELP safehold_took_ms took\n# TYPE safehold_took_ms gauge\n"
        "# HELP safehold_runs_total runs\n# TYPE safehold_runs_total gauge\n"
        "# HELP safehold_last_timestamp when\n# TYPE safehold_last_timestamp gauge\n"
        "# HELP safehold_seconds_taken x\n# TYPE safehold_seconds_taken gauge\n"
    )
    found = [why for family in _families(bad) for why in _break_conventions(family)]
    assert len(found) == 5 and all(found), found


def test_textfile_follows_the_conventions_and_holds_timestamps_not_ages(
    repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "f").write_text("x" * 1000)
    manifest = backup_tree(folder, "uploads", repo)
    checked = verify_backup(repo, manifest.artifact, "quick")
    goals = Objectives(rpo_s=24 * 3600)
    readings = []
    for hours in (1, 2):  # the same backups, read an hour apart: both well inside the RPO
        now = manifest.started_at + timedelta(hours=hours)
        report = read_status(repo, now=now, objectives=goals, database=None)
        out = tmp_path / f"reading-{hours}.prom"
        write_metrics(report, out)
        readings.append((now, _families(out.read_text())))

    (first_at, first), (second_at, second) = readings
    assert [why for family in first for why in _break_conventions(family)] == []
    one, two = _samples(first), _samples(second)
    labels = (("kind", "volume"), ("target", "uploads"))
    assert one[("safehold_last_success_timestamp_seconds", labels)] == pytest.approx(
        manifest.started_at.timestamp(),
        abs=0.001,  # manifests keep milliseconds
    )
    assert one[("safehold_verify_timestamp_seconds", labels)] == pytest.approx(
        checked.checked_at.timestamp(), abs=1
    )
    assert one[("safehold_backup_size_bytes", labels)] == manifest.size
    # Nothing but the reading's own time moved in an hour: no value is an age.
    assert one.pop((READING_TIME, ())) == first_at.timestamp()
    assert two.pop((READING_TIME, ())) == second_at.timestamp()
    assert one == two


def test_the_daemons_job_metrics_follow_the_conventions() -> None:
    registry = CollectorRegistry()
    JobMetrics(registry)
    families = _families(generate_latest(registry).decode())
    assert {f.name for f in families} >= {"safehold_job_last_run_timestamp_seconds"}
    assert [why for family in families for why in _break_conventions(family)] == []
