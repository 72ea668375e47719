"""Objectives that match the schedule: each target's RPO follows from how often the schedule
backs it up unless ``[objectives]`` sets it (per target, per kind, or ``rpo_hours`` for all),
with a grace; status judged on real backups at controlled clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safehold import config, naming
from safehold.config.cadence import interval_s
from safehold.errors import ConfigError
from safehold.model import Objectives, null_sink
from safehold.operations._pipeline import commit, repository_session
from safehold.operations.database.backup import BackupOptions, dump_database
from safehold.operations.report.status import read_status
from safehold.operations.volumes.folder import folder_source, volume_artifact, write_tree_backup
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

HOUR, DAY = 3600.0, 86400.0
SUNDAY = datetime(2024, 12, 1, 3, 0, tzinfo=UTC)  # the default full-system job's slot


def goals(tmp_path: Path, toml: str = "", **env: str) -> Objectives:
    path = tmp_path / "safehold.toml"
    path.write_text(toml)
    return config.load(path, env=env).objectives_s()


def old_volume(repo: LocalStorage, folder: Path, target: str, when: datetime) -> None:
    name = volume_artifact(target, when, "gzip")
    with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
        manifest = write_tree_backup(
            folder_source(folder), target, repo, name, when, "gzip", null_sink
        )
        commit(repo, manifest, null_sink, "")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_text("content\n" * 100)
    return root


@pytest.mark.parametrize(
    ("expressions", "seconds"),
    [
        (["0 2 * * *"], DAY),
        (["0 3 * * 0"], 7 * DAY),
        (["0 2 * * *", "0 3 * * 0"], DAY),  # the full job dumps the database too
        (["0 2 * * *", "0 * * * *"], HOUR),  # schedule.hourly
        (["0 2 * * 1-5"], 3 * DAY),  # Friday to Monday is the gap that counts
        (["0 4 1 * *"], 31 * DAY),
        (["*/15 * * * *"], 15 * 60),
        (["0 0 30 2 *"], None),  # never fires: nothing to derive
        ([], None),
    ],
)
def test_interval_is_the_longest_gap_between_firings(
    expressions: list[str], seconds: float | None
) -> None:
    assert interval_s({f"k{i}": e for i, e in enumerate(expressions)}) == seconds


def test_rpo_follows_the_schedule_unless_set(tmp_path: Path) -> None:
    default = goals(tmp_path)
    assert default.rpo("database", "app") == DAY and default.rpo("volume", "user-1") == 7 * DAY
    # Grace: 10 % of the RPO, at least 30 min, never more than half the RPO.
    assert default.grace(DAY) == pytest.approx(2.4 * HOUR)
    assert default.grace(7 * DAY) == pytest.approx(16.8 * HOUR)
    assert default.grace(HOUR) == 30 * 60
    assert default.grace(20 * 60) == 10 * 60

    hourly = goals(tmp_path, "[schedule]\nhourly = true\n")
    assert hourly.rpo("database", "app") == HOUR and hourly.rpo("volume", "v") == 7 * DAY
    weekdays = goals(tmp_path, '[schedule]\ndatabase = "0 2 * * 1-5"\nfull = "off"\n')
    # No job backs the volumes up: the procedures' 24 h, not "never late".
    assert weekdays.rpo("database", "app") == 3 * DAY and weekdays.rpo("volume", "v") == DAY

    everyone = goals(tmp_path, "[objectives]\nrpo_hours = 6\n")
    assert everyone.rpo("database", "app") == everyone.rpo("volume", "v") == 6 * HOUR
    kinds = goals(
        tmp_path,
        "[objectives]\nrpo_hours = 6\nrpo_hours_volumes = 48\n"
        'rpo_hours_targets = ["user-*=168", "app-data=12"]\n',
    )
    assert kinds.rpo("database", "app") == 6 * HOUR
    assert kinds.rpo("volume", "other") == 48 * HOUR
    assert kinds.rpo("volume", "user-7") == 168 * HOUR
    assert kinds.rpo("volume", "app-data") == 12 * HOUR
    env = goals(tmp_path, SAFEHOLD_OBJECTIVES_RPO_HOURS_DATABASE="2")
    assert env.rpo("database", "app") == 2 * HOUR and env.rpo("volume", "v") == 7 * DAY
    strict = goals(tmp_path, "[objectives]\ngrace_percent = 0\ngrace_minutes = 0\n")
    assert strict.grace(DAY) == 0
    with pytest.raises(ConfigError, match=r"rpo_hours_targets: 'user-1' is not NAME=HOURS"):
        goals(tmp_path, '[objectives]\nrpo_hours_targets = ["user-1"]\n')
    with pytest.raises(ConfigError, match=r"schedule\.full: 'every sunday' is not a cron"):
        goals(tmp_path, '[schedule]\nfull = "every sunday"\n')


def test_weekly_volumes_are_judged_against_a_week(
    repo: LocalStorage, folder: Path, tmp_path: Path
) -> None:
    old_volume(repo, folder, "user-data", SUNDAY)
    old_volume(repo, folder, "user-1", SUNDAY)
    objectives = goals(tmp_path, '[objectives]\nrpo_hours_targets = ["user-1=24"]\n')

    def judged(now: datetime) -> dict[str, tuple[str, list[str]]]:
        report = read_status(repo, now=now, objectives=objectives, database=None)
        return {t.target: (t.level, t.reasons) for t in report.targets}

    # Four days after the weekly run: the volume is fine (with the old 24 h RPO: critical).
    assert judged(SUNDAY + timedelta(days=4))["user-data"] == ("ok", [])
    # The next Sunday's run is two hours late: within the grace.
    assert judged(SUNDAY + timedelta(days=7, hours=2))["user-data"] == ("ok", [])
    level, reasons = judged(SUNDAY + timedelta(days=8))["user-data"]
    assert level == "warning"
    assert reasons == ["newest backup is 192.0 h old (RPO 168.0 h + 16.8 h grace)"]
    assert judged(SUNDAY + timedelta(days=14, hours=17))["user-data"][0] == "critical"
    # A target with its own RPO: user-1 is late after a day and its grace.
    late = judged(SUNDAY + timedelta(days=4))["user-1"]
    assert late[0] == "critical" and "(RPO 24.0 h + 2.4 h grace)" in late[1][0]


def test_hourly_database_backups_make_the_rpo_an_hour(
    repo: LocalStorage, db: PgTarget, tmp_path: Path
) -> None:
    taken = datetime(2024, 12, 1, 14, 0, tzinfo=UTC)
    name = naming.database_artifact(taken, "gzip")
    with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
        manifest = dump_database(db, repo, name, taken, BackupOptions(), null_sink)
        commit(repo, manifest, null_sink, "")
    objectives = goals(tmp_path, "[schedule]\nhourly = true\n")

    def target_at(minutes: int) -> tuple[str, bool, float | None]:
        now = taken + timedelta(minutes=minutes)
        report = read_status(repo, now=now, objectives=objectives, database=db.dbname)
        (target,) = report.targets
        return target.level, target.breached, target.rpo_s

    assert target_at(80) == ("ok", False, HOUR)  # an hour and the 30 min grace
    assert target_at(100) == ("warning", True, HOUR)
    assert target_at(160) == ("critical", True, HOUR)  # past 2 x 1 h + 30 min
    report = read_status(repo, now=taken, objectives=objectives, database=db.dbname)
    payload = report.to_json()
    assert payload["targets"][0]["rpo_s"] == HOUR and payload["targets"][0]["grace_s"] == 1800
    assert payload["objectives"]["rpo_volumes_s"] == 7 * DAY
