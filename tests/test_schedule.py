"""Schedules: the job list from settings, the crontab (always a temporary crontab file, never the
user's), next run times for a fixed ``now``, the daemon loop (a fake clock, real child
processes), its metrics endpoint over real HTTP, the daemon command and its SIGTERM, and one
real ``safehold backup`` run by the daemon's runner."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from safehold import catalog, config
from safehold.errors import ConfigError, UsageError
from safehold.model import BackupSet, Event
from safehold.operations.checks.doctor import schedule as doctor_schedule
from safehold.scheduler import (
    CrontabRef,
    DaemonLog,
    Invocation,
    Job,
    JobMetrics,
    MetricsServer,
    Outcome,
    StatusCollector,
    Stop,
    SubprocessRunner,
    cron_line,
    install,
    invocation,
    next_runs,
    plan,
    remove,
    run_loop,
)
from safehold.scheduler.jobs import hourly_expression
from safehold.scheduler.show import describe, render_text
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT, CliRunner, seed_env

NOW = datetime(2024, 12, 1, 1, 59, tzinfo=UTC)  # a Sunday, a minute before the daily backup
FOREIGN = (
    'MAILTO="ops@example.com"\n'
    "# the application's own jobs\n"
    "0  1 * * * /opt/app/cleanup.sh >> /var/log/cleanup.log 2>&1 # keep me\n"
    "FOO = bar baz\n"
    '*/5 * * * * echo "a # b"\n'
    "# 5 4 * * * /opt/app/disabled.sh\n"
)


def load(tmp_path: Path, toml: str = "", **env: str) -> config.Settings:
    path = tmp_path / "safehold.toml"
    path.write_text(toml)
    return config.load(path, env=env)


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    base.update(PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def marked(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if "# safehold:" in line]
    found = {line.rsplit("# safehold:", 1)[1]: line for line in lines}
    assert len(found) == len(lines), f"duplicate safehold lines:\n{text}"
    return found


# ---- the job list ----


def test_default_jobs_and_why_others_are_not_scheduled(tmp_path: Path) -> None:
    schedule = plan(load(tmp_path))
    assert [(j.name, j.expression, j.steps) for j in schedule.jobs] == [
        ("database", "0 2 * * *", (("backup",), ("prune",))),
        ("full", "0 3 * * 0", (("backup", "--all"), ("prune",))),
        ("drill", "0 5 2 * *", (("drill", "--latest"),)),
        ("quarterly_drill", "0 6 3 1,4,7,10 *", (("drill", "--full-system", "--set", "latest"),)),
        (
            "annual_drill",
            "0 6 10 1 *",
            (("drill", "--full-system", "--set", "latest", "--sandbox"),),
        ),
    ]
    reasons = {s.name: s.reason for s in schedule.not_scheduled}
    assert "schedule.archive_location is empty" in reasons["archive"]
    assert reasons["hourly"] == "schedule.hourly is false"


def test_hourly_archive_and_no_prune(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[schedule]\nhourly = true\narchive_location = "/mnt/archive"\n'
        "[retention]\nprune_after_backup = false\n",
    )
    jobs = {j.name: j for j in plan(settings).jobs}
    assert list(jobs) == [
        "database",
        "full",
        "hourly",
        "archive",
        "drill",
        "quarterly_drill",
        "annual_drill",
    ]
    assert jobs["database"].steps == (("backup",),)
    # Every hour except 02:00, when the daily backup runs; waits for a lock held by a long job.
    assert jobs["hourly"].expression == "0 0-1,3-23 * * *"
    assert jobs["hourly"].steps == (("backup", "--lock-timeout", "3000"),)
    # Only each month's representatives go to the archive (retention's monthly choice).
    archive = ("copy", "--to", "/mnt/archive", "--representative", "monthly")
    assert jobs["archive"].steps == (archive,)
    assert jobs["archive"].expression == "0 4 1 * *"


@pytest.mark.parametrize(
    ("daily", "hourly"),
    [
        ("0 2 * * *", "0 0-1,3-23 * * *"),
        ("0 0,12 * * *", "0 1-11,13-23 * * *"),
        ("@daily", "0 1-23 * * *"),
        ("30 2 * * *", "0 * * * *"),  # never at minute 0: no clash
        ("0 2 * * 1-5", "0 * * * *"),  # not every day: one cron line cannot leave it out
        ("0 * * * *", None),  # the database backup is already hourly
        (None, "0 * * * *"),  # the daily one is off
    ],
)
def test_hourly_expression(daily: str | None, hourly: str | None) -> None:
    assert hourly_expression(daily) == hourly


@pytest.mark.parametrize("bad", ["0 2 * *", "0 2 * * * *", "61 * * * *", "@reboot", "daily"])
def test_a_bad_cron_expression_names_its_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.drill"):
        plan(load(tmp_path, f'[schedule]\ndrill = "{bad}"\n'))


def test_off_turns_a_job_off(tmp_path: Path) -> None:
    toml = '[schedule]\nfull = "off"\ndrill = ""\nquarterly_drill = "off"\nannual_drill = "Off"\n'
    schedule = plan(load(tmp_path, toml))
    assert [j.name for j in schedule.jobs] == ["database"]
    reasons = {s.name: s.reason for s in schedule.not_scheduled}
    assert reasons["full"] == "schedule.full is off"
    assert reasons["quarterly_drill"] == "schedule.quarterly_drill is off"
    assert reasons["annual_drill"] == "schedule.annual_drill is off"


# ---- next runs ----


def test_next_runs_for_a_fixed_now() -> None:
    utc = ZoneInfo("UTC")
    assert next_runs("0 2 * * *", NOW, 3, utc) == [
        datetime(2024, 12, d, 2, 0, tzinfo=utc) for d in (1, 2, 3)
    ]
    assert [t.date().isoformat() for t in next_runs("0 3 * * 0", NOW, 3, utc)] == [
        "2024-12-01",
        "2024-12-08",
        "2024-12-15",
    ]
    assert [t.isoformat() for t in next_runs("0 5 2 * *", NOW, 2, utc)] == [
        "2024-12-02T05:00:00+00:00",
        "2025-01-02T05:00:00+00:00",
    ]
    # Cron reads expressions in local time: 02:00 in Berlin is 01:00 UTC in winter, so at
    # 01:59 UTC today's run has passed.
    berlin = ZoneInfo("Europe/Berlin")
    first = next_runs("0 2 * * *", NOW, 1, berlin)[0]
    assert first.astimezone(UTC) == datetime(2024, 12, 2, 1, 0, tzinfo=UTC)
    # 02:30 does not exist on the spring-forward night: it runs at 03:00 CEST instead.
    spring = next_runs("30 2 * * *", datetime(2024, 3, 30, 12, tzinfo=UTC), 1, berlin)[0]
    assert spring.astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)


def test_show_report_for_a_fixed_now(tmp_path: Path) -> None:
    settings = load(tmp_path, f'log_file = "{tmp_path}/safehold.log"\n')
    ref = CrontabRef(file=tmp_path / "crontab")
    how = Invocation(("/opt/safehold",), Path("/srv/app"), tmp_path / "safehold.toml", ())
    report = describe(settings, ref, now=NOW, zone=ZoneInfo("Europe/Berlin"), how=how)
    jobs = {j["job"]: j for j in report["jobs"]}
    assert jobs["database"]["installed"] == "no"
    assert jobs["database"]["next_runs"][0] == {
        "local": "2024-12-02T02:00:00+01:00",
        "utc": "2024-12-02T01:00:00+00:00",
        "zone": "CET",
    }
    assert len(jobs["full"]["next_runs"]) == 3
    assert jobs["database"]["commands"] == [
        ["/opt/safehold", "backup", "--config", str(tmp_path / "safehold.toml")],
        ["/opt/safehold", "prune", "--config", str(tmp_path / "safehold.toml")],
    ]
    text = "\n".join(render_text(report))
    assert "Mon 2024-12-02 02:00 CET (2024-12-02 01:00 UTC)" in text
    assert re.search(r"\narchive +not scheduled: schedule\.archive_location is empty", text)
    assert report["timezone"] == "Europe/Berlin"


def test_show_warns_of_a_full_system_job_without_volumes_and_gives_the_rpo(
    tmp_path: Path,
) -> None:
    how = Invocation(("/opt/safehold",), tmp_path, None, ())
    ref = CrontabRef(file=tmp_path / "crontab")
    bare = describe(load(tmp_path), ref, now=NOW, zone=UTC, how=how)
    (warning,) = [w for w in bare["warnings"] if "volumes" in w]
    assert warning.startswith("the full-system job (full, 0 3 * * 0) backs up no volumes")
    assert bare["rpo"]["database_s"] == 86400 and bare["rpo"]["volumes_s"] == 7 * 86400
    text = "\n".join(render_text(bare))
    assert "note: the full-system job (full, 0 3 * * 0) backs up no volumes" in text
    assert "RPO: database 24 h, volumes 7 d (from the schedule" in text
    named = describe(load(tmp_path, '[volumes]\ninclude = ["user-*"]\n'), ref, now=NOW,
                     zone=UTC, how=how)  # fmt: skip
    assert not [w for w in named["warnings"] if "volumes" in w]
    off = describe(load(tmp_path, '[schedule]\nfull = "off"\n'), ref, now=NOW, zone=UTC, how=how)
    assert not [w for w in off["warnings"] if "volumes" in w]


def test_doctor_warns_of_a_full_system_job_without_volumes(
    repo: LocalStorage, tmp_path: Path
) -> None:
    assert doctor_schedule.full_system((), (), None, repo) == []  # nothing to go by
    (named,) = doctor_schedule.full_system(("user-*",), (), "0 3 * * 0", repo)
    assert named.result == "OK"
    (told,) = doctor_schedule.full_system((), (), "0 3 * * 0", repo)
    assert told.result == "WARN" and "(0 3 * * 0) backs up no volumes" in told.detail
    assert 'schedule.full = "off"' in told.fix
    # Without the schedule, the newest set in the repository is the evidence.
    moment = datetime(2024, 12, 1, 3, tzinfo=UTC)
    catalog.write_set(repo, BackupSet("20241201_030000", moment, moment, ("x",), "app", (), "t"))
    (seen,) = doctor_schedule.full_system((), (), None, repo)
    assert seen.result == "WARN" and "set 20241201_030000 holds no volumes" in seen.detail


def test_a_full_system_backup_without_volumes_says_so(run_cli: CliRunner) -> None:
    done = run_cli("backup", "--all")
    assert done.returncode == 0, done.stderr
    assert "the full-system backup holds no volumes, only the database" in done.stderr
    assert done.stdout.startswith("set ")


# ---- the crontab ----


def test_cron_line_quotes_escapes_and_refuses(tmp_path: Path) -> None:
    job = Job("database", "0 2 * * *", (("backup",), ("prune",)), "database backup")
    how = Invocation(
        ("/opt/app/.venv/bin/safehold",),
        Path("/srv/my app%1"),
        Path("/srv/my app%1/safehold.toml"),
        (("SAFEHOLD_BACKUP_DIR", "/srv/back ups"),),
    )
    line = cron_line(job, how)
    assert line == (
        "0 2 * * * cd '/srv/my app\\%1' && export SAFEHOLD_BACKUP_DIR='/srv/back ups' && "
        "{ /opt/app/.venv/bin/safehold backup --config '/srv/my app\\%1/safehold.toml' -q && "
        "/opt/app/.venv/bin/safehold prune --config '/srv/my app\\%1/safehold.toml' -q; } "
        ">/dev/null # safehold:database"
    )
    hashed = Invocation(("/opt/safehold",), Path("/srv/a #b"), None, ())
    with pytest.raises(UsageError, match="crontab line"):
        cron_line(job, hashed)


@pytest.mark.slow
def test_install_is_idempotent_and_leaves_other_lines_alone(tmp_path: Path) -> None:
    conf = tmp_path / "safehold.toml"
    conf.write_text(f'backup_dir = "{tmp_path}/backups"\nlog_file = "{tmp_path}/log/s.log"\n')
    tab = tmp_path / "crontab"
    tab.write_text(FOREIGN)
    args = ("--config", str(conf), "--crontab-file", str(tab))

    first = cli("schedule", "install", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    text = tab.read_text()
    assert text.startswith(FOREIGN)  # byte for byte, ours appended
    ours = marked(text)
    assert list(ours) == ["database", "full", "drill", "quarterly_drill", "annual_drill"]
    assert ours["database"].startswith(f"0 2 * * * cd {tmp_path} && {{ ")
    assert ours["full"].startswith("0 3 * * 0 ")
    assert ours["drill"].startswith("0 5 2 * * ")
    assert f"safehold backup --config {conf} -q && " in ours["database"]
    assert f"safehold backup --all --config {conf} -q && " in ours["full"]
    assert f"safehold drill --latest --config {conf} -q >/dev/null" in ours["drill"]
    assert first.stdout.splitlines() == list(ours.values())
    assert "archive not scheduled" in first.stderr

    again = cli("schedule", "install", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert tab.read_text() == text
    assert "already as it should be" in again.stderr

    # The user adds a line of their own after ours; hourly backups are switched on.
    tab.write_text(text + "30 6 * * * /usr/local/bin/report\n")
    conf.write_text(conf.read_text() + "[schedule]\nhourly = true\n")
    third = cli("schedule", "install", *args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    text = tab.read_text()
    assert text.startswith(FOREIGN)
    assert text.endswith("30 6 * * * /usr/local/bin/report\n")
    ours = marked(text)
    assert list(ours) == [
        "database",
        "full",
        "hourly",
        "drill",
        "quarterly_drill",
        "annual_drill",
    ]
    assert ours["hourly"].startswith("0 0-1,3-23 * * * ")

    shown = cli("schedule", "show", "--json", *args, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert {j["job"]: j["installed"] for j in report["jobs"]} == dict.fromkeys(ours, "yes")
    assert all(len(j["next_runs"]) == 3 for j in report["jobs"])

    # A changed schedule shows as differing until installed again; an old job as stale.
    conf.write_text(
        conf.read_text().replace("hourly = true", 'hourly = false\ndatabase = "0 1 * * *"')
    )
    report = json.loads(cli("schedule", "show", "--json", *args, cwd=tmp_path).stdout)
    assert {j["job"]: j["installed"] for j in report["jobs"]}["database"] == "differs"
    assert [s["job"] for s in report["stale"]] == ["hourly"]
    plain = cli("schedule", "show", *args, cwd=tmp_path)
    assert "installed line differs (safehold schedule install updates it)" in plain.stdout

    removed = cli("schedule", "remove", *args, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert tab.read_text() == FOREIGN + "30 6 * * * /usr/local/bin/report\n"
    assert len(removed.stdout.splitlines()) == 6
    assert cli("schedule", "remove", *args, cwd=tmp_path).stdout == ""


def test_a_commented_out_line_is_still_ours(tmp_path: Path) -> None:
    settings = load(tmp_path)
    how = Invocation(("/opt/safehold",), tmp_path, None, ())
    lines = [cron_line(job, how) for job in plan(settings).jobs]
    ref = CrontabRef(file=tmp_path / "crontab")
    assert install(ref, lines).added == lines
    text = (tmp_path / "crontab").read_text().replace("0 5 2 * *", "# 0 5 2 * *")
    (tmp_path / "crontab").write_text("# 0 4 * * * /opt/other # not ours\n" + text)
    report = describe(settings, ref, now=NOW, zone=UTC, how=how)
    assert {j["job"]: j["installed"] for j in report["jobs"]}["drill"] == "disabled"
    change = install(ref, lines)
    assert change.removed == text.splitlines()
    assert (tmp_path / "crontab").read_text() == "# 0 4 * * * /opt/other # not ours\n" + (
        "".join(line + "\n" for line in lines)
    )
    assert remove(ref).removed == lines
    assert (tmp_path / "crontab").read_text() == "# 0 4 * * * /opt/other # not ours\n"


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    tab = tmp_path / "crontab"
    done = cli("schedule", "install", "--dry-run", "--crontab-file", str(tab), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not tab.exists()
    assert "would install 5 jobs" in done.stderr
    assert len(done.stdout.splitlines()) == 5


def test_settings_from_flags_and_env_go_along_but_never_the_password(tmp_path: Path) -> None:
    tab = tmp_path / "crontab"
    done = cli(
        "schedule",
        "install",
        "--crontab-file",
        str(tab),
        "--db-host",
        "prod-db",
        cwd=tmp_path,
        env={
            "BACKUP_DIR": "/srv/backups",
            "PGPASSWORD": "s3cret-pw",
            "SAFEHOLD_ALERTS_WEBHOOK_URL": "https://hooks.example.com/T0KEN",
        },
    )
    assert done.returncode == 0, done.stderr
    text = tab.read_text()
    assert "export " in text
    assert "SAFEHOLD_BACKUP_DIR=/srv/backups" in text
    assert "SAFEHOLD_DATABASE_HOST=prod-db" in text
    assert "s3cret-pw" not in text and "T0KEN" not in text
    assert "--config" not in text  # no config file in play
    assert "set database.password_file" in done.stderr
    assert "alerts.webhook_url comes from the environment" in done.stderr


SEED_LINE = "0 2 * * * /opt/app/scripts/backup.sh >> /var/log/backup.log 2>&1"


@pytest.mark.slow
def test_the_seeds_own_line_is_found_kept_or_replaced_and_put_back(tmp_path: Path) -> None:
    tab = tmp_path / "crontab"
    original = FOREIGN + SEED_LINE + "\n" + "# 0 3 * * * /opt/old/scripts/backup.sh\n"
    tab.write_text(original)
    args = ("--crontab-file", str(tab))

    kept = cli("schedule", "install", *args, cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert tab.read_text().startswith(original)  # left as it is...
    warning = next(line for line in kept.stderr.splitlines() if SEED_LINE in line)
    assert "WARNING" in warning and "left as it is" in warning  # ...and said so
    assert "backed up twice" in warning and "--replace-seed" in warning
    assert "/opt/old" not in kept.stderr  # a commented-out line runs nothing
    shown = json.loads(cli("schedule", "show", "--json", *args, cwd=tmp_path).stdout)
    assert shown["other_backups"] == [SEED_LINE]

    replaced = cli("schedule", "install", "--replace-seed", *args, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    text = tab.read_text()
    assert "\n#safehold-off: " + SEED_LINE + "\n" in text
    assert list(marked(text)) == ["database", "full", "drill", "quarterly_drill", "annual_drill"]
    assert "commented out the crontab's own backup line" in replaced.stderr
    assert "left as it is" not in replaced.stderr
    shown = json.loads(cli("schedule", "show", "--json", *args, cwd=tmp_path).stdout)
    assert shown["other_backups"] == []

    removed = cli("schedule", "remove", *args, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert tab.read_text() == original
    assert "switched back on" in removed.stderr and SEED_LINE in removed.stderr

    # With the database job off, the seed's line is the database backup: nothing to replace.
    conf = tmp_path / "safehold.toml"
    conf.write_text('[schedule]\ndatabase = "off"\n')
    off = cli("schedule", "install", "--config", str(conf), *args, cwd=tmp_path)
    assert off.returncode == 0, off.stderr
    (said,) = [line for line in off.stderr.splitlines() if SEED_LINE in line]
    assert "INFO" in said and "left as it is" in said and "schedule.database is off" in said
    refused = cli(
        "schedule", "install", "--replace-seed", "--config", str(conf), *args, cwd=tmp_path
    )
    assert refused.returncode == 2 and "--replace-seed" in refused.stderr


def test_install_warns_about_each_variable_cron_will_not_have(tmp_path: Path) -> None:
    conf = tmp_path / "safehold.toml"
    conf.write_text(
        'log_file = "s.log"\n'
        '[encryption]\npassphrase_env = "BACKUP_PASSPHRASE"\n'
        '[locations.offsite]\nbucket = "b"\nendpoint = "http://127.0.0.1:9"\n'
        '[locations.keyed]\nbucket = "c"\ncredentials_file = "aws.ini"\n'
    )
    tab = tmp_path / "crontab"
    secrets = {
        "PGPASSWORD": "pg-s3cret",
        "BACKUP_PASSPHRASE": "pass-s3cret",
        "AWS_ACCESS_KEY_ID": "AKIA-s3cret",
        "AWS_SECRET_ACCESS_KEY": "aws-s3cret",
    }
    done = cli(
        "schedule",
        "install",
        "--config",
        str(conf),
        "--crontab-file",
        str(tab),
        cwd=tmp_path,
        env={**secrets, "AWS_PROFILE": "backups"},
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert any("PGPASSWORD" in w and "database.password_file" in w for w in warnings), warnings
    assert any(
        "$BACKUP_PASSPHRASE" in w and "passphrase_file" in w and "passphrase_command" in w
        for w in warnings
    ), warnings
    (s3,) = [w for w in warnings if "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in w]
    assert "[locations.offsite]" in s3 and "credentials_file" in s3
    assert "[locations.keyed]" not in s3  # it has its own file
    text = tab.read_text()
    assert not any(secret in text for secret in secrets.values())
    assert "AWS_PROFILE=backups" in text  # not a secret, and the jobs need it


def test_install_refuses_user_and_file_together(tmp_path: Path) -> None:
    done = cli("schedule", "install", "--user", "x", "--crontab-file", "t", cwd=tmp_path)
    assert done.returncode == 2
    assert "not both" in done.stderr


# ---- the daemon loop: a fake clock, real child processes ----

FAKE = """\
import json, os, sys, time
record = {"argv": sys.argv[1:], "start": time.time()}
time.sleep(0.05)
record["end"] = time.time()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
print("fake safehold " + " ".join(sys.argv[1:]), file=sys.stderr)
failing = os.environ.get("FAKE_FAIL", "")
sys.exit(3 if failing and failing in sys.argv[1:] else 0)
"""


class FakeClock:
    """Time moves only when the loop waits or a job's simulated duration passes."""

    def __init__(self, start: datetime) -> None:
        self.moment = start
        self.waits: list[float] = []

    def now(self) -> datetime:
        return self.moment

    def wait(self, seconds: float, stop: Stop) -> None:
        self.waits.append(seconds)
        if not stop.is_set():
            self.moment += timedelta(seconds=max(seconds, 0.0))


class TimedRunner:
    """Runs the job for real, then moves the fake clock on by the job's simulated duration."""

    def __init__(
        self, inner: SubprocessRunner, clock: FakeClock, took: dict[str, list[timedelta]]
    ) -> None:
        self.inner, self.clock, self.took = inner, clock, took

    def __call__(self, job: Job, stop: Stop) -> Outcome:
        outcome = self.inner(job, stop)
        durations = self.took.get(job.name) or [timedelta(minutes=1)]
        self.clock.moment += durations.pop(0) if len(durations) > 1 else durations[0]
        return outcome


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(f"{e.level} {e.kind}: {e.message}" for e in self.events)


def fake_runner(tmp_path: Path, fail: str = "") -> tuple[SubprocessRunner, Path, io.StringIO]:
    script = tmp_path / "fake_safehold.py"
    script.write_text(FAKE)
    log = tmp_path / "calls.jsonl"
    env = (("FAKE_FAIL", fail), ("FAKE_LOG", str(log)))
    how = Invocation((sys.executable, str(script)), tmp_path, None, env)
    raw = io.StringIO()
    return SubprocessRunner(how, DaemonLog(lambda _e: None, raw)), log, raw


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_loop_runs_due_jobs_in_order_and_a_failure_does_not_stop_the_next(
    tmp_path: Path,
) -> None:
    inner, log, raw = fake_runner(tmp_path, fail="--all")
    clock = FakeClock(NOW)
    events = Recorder()
    runs = run_loop(
        plan(load(tmp_path)).jobs,
        TimedRunner(inner, clock, {}),
        clock=clock,
        stop=Stop(),
        log=events,
        zone=UTC,
        max_runs=4,
    )
    assert [(r.job, r.due.isoformat(), r.outcome.exit_code) for r in runs] == [
        ("database", "2024-12-01T02:00:00+00:00", 0),
        ("full", "2024-12-01T03:00:00+00:00", 3),  # the full backup fails: prune is skipped
        ("database", "2024-12-02T02:00:00+00:00", 0),
        ("drill", "2024-12-02T05:00:00+00:00", 0),
    ]
    assert [c["argv"] for c in calls(log)] == [
        ["backup"],
        ["prune"],
        ["backup", "--all"],
        ["backup"],
        ["prune"],
        ["drill", "--latest"],
    ]
    spans = [(c["start"], c["end"]) for c in calls(log)]
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert "fake safehold backup --all" in raw.getvalue()  # the job's stderr, passed through
    text = events.text()
    assert "error job: full: failed with exit code 3 after 60.0s in '" in text
    assert "fake safehold backup --all" in text  # the failure says why (its last line)
    assert "info daemon: next: database at 2024-12-02 02:00 UTC" in text


def test_missed_runs_collapse_into_one(tmp_path: Path) -> None:
    inner, _log, _raw = fake_runner(tmp_path)
    hourly = Job("a", "0 * * * *", (("backup",),), "hourly backup")
    quarter = Job("b", "*/15 * * * *", (("verify",),), "a quarter-hourly check")
    clock = FakeClock(datetime(2024, 12, 1, 0, 59, tzinfo=UTC))
    took = {"a": [timedelta(hours=3), timedelta(minutes=1)]}
    runs = run_loop(
        [hourly, quarter],
        TimedRunner(inner, clock, took),
        clock=clock,
        stop=Stop(),
        log=Recorder(),
        zone=UTC,
        max_runs=4,
    )
    # Both are due at 01:00: "a" goes first (schedule order) and runs until 04:00. "b" missed
    # its 01:00 to 03:45 runs (12) and runs once; "a" missed its own 02:00, 03:00 and 04:00
    # runs and catches up once; then both are back on their schedule.
    assert [(r.job, f"{r.due:%H:%M}", f"{r.started:%H:%M}") for r in runs] == [
        ("a", "01:00", "01:00"),
        ("b", "01:00", "04:00"),
        ("a", "02:00", "04:01"),
        ("b", "04:15", "04:15"),
    ]


def test_a_job_that_cannot_start_is_a_failure_not_the_end(tmp_path: Path) -> None:
    how = Invocation((str(tmp_path / "no-such-safehold"),), tmp_path, None, ())
    clock = FakeClock(NOW)
    events = Recorder()
    runs = run_loop(
        plan(load(tmp_path)).jobs,
        TimedRunner(SubprocessRunner(how, DaemonLog(events)), clock, {}),
        clock=clock,
        stop=Stop(),
        log=events,
        zone=UTC,
        max_runs=2,
    )
    assert [(r.job, r.outcome.exit_code) for r in runs] == [("database", 1), ("full", 1)]
    assert "cannot run" in events.text()


def test_stop_interrupts_the_running_job_and_ends_the_loop(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        "import sys, time\n"
        "try:\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    print('interrupted, cleaning up', file=sys.stderr)\n"
        "    sys.exit(130)\n"
    )
    how = Invocation((sys.executable, str(script)), tmp_path, None, ())
    events = Recorder()
    stop = Stop()
    job = Job("database", "* * * * *", (("backup",), ("prune",)), "backup")
    timer = threading.Timer(1.0, stop.request, args=("SIGTERM",))
    timer.start()
    began = time.monotonic()
    try:
        runs = run_loop(
            [job],
            SubprocessRunner(how, DaemonLog(events), stop_timeout=20),
            clock=FakeClock(NOW),
            stop=stop,
            log=events,
            zone=UTC,
        )
    finally:
        timer.cancel()
    assert time.monotonic() - began < 15
    assert [(r.job, r.outcome.exit_code) for r in runs] == [("database", 130)]
    assert "interrupted, cleaning up" in runs[0].outcome.detail
    assert "stopped (SIGTERM)" in events.text()


@pytest.mark.slow
def test_a_job_that_ignores_the_interrupt_is_killed_after_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n"
    )
    how = Invocation((sys.executable, str(script)), tmp_path, None, ())
    stop = Stop()
    timer = threading.Timer(0.5, stop.request, args=("SIGTERM",))
    timer.start()
    try:
        outcome = SubprocessRunner(how, DaemonLog(Recorder()), stop_timeout=1)(
            Job("x", "* * * * *", (("backup",),), "x"), stop
        )
    finally:
        timer.cancel()
    assert outcome.exit_code == 128 + signal.SIGKILL


# ---- metrics ----


def test_metrics_endpoint_answers_with_job_and_status_metrics(tmp_path: Path) -> None:
    settings = load(tmp_path, f'backup_dir = "{tmp_path}/backups"\n')
    inner, _log, _raw = fake_runner(tmp_path, fail="--all")
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    registry.register(StatusCollector(settings, Recorder()))
    full = plan(settings).job("full")
    assert full is not None
    clock = FakeClock(datetime(2024, 12, 1, 2, 59, tzinfo=UTC))
    with MetricsServer(registry, "127.0.0.1", 0) as server:
        assert server.port > 0
        run_loop(
            [full],
            TimedRunner(inner, clock, {}),
            clock=clock,
            stop=Stop(),
            log=Recorder(),
            zone=UTC,
            observer=metrics,
            max_runs=1,
        )
        with urllib.request.urlopen(server.url, timeout=10) as answer:  # noqa: S310
            body = answer.read().decode()
    assert 'safehold_job_last_exit_code{job="full"} 3.0' in body
    samples = {
        (s.name, s.labels.get("job")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("safehold_job_last_exit_code", "full")] == 3
    assert samples[("safehold_job_duration_seconds", "full")] == 60
    started = datetime(2024, 12, 1, 3, 0, tzinfo=UTC)
    assert samples[("safehold_job_last_run_timestamp_seconds", "full")] == started.timestamp()
    following = datetime(2024, 12, 8, 3, 0, tzinfo=UTC)
    assert samples[("safehold_job_next_run_timestamp_seconds", "full")] == following.timestamp()
    assert samples[("safehold_status_overall", None)] == 2  # no backups yet: critical
    assert samples[("safehold_status_read_ok", None)] == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)  # noqa: S310  # closed


@pytest.mark.timeout(120)
def test_daemon_command_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    conf = tmp_path / "safehold.toml"
    conf.write_text(f'backup_dir = "{tmp_path}/backups"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", "daemon", "--config", str(conf), "--metrics-port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while not any("daemon: next:" in line for line in seen):
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        url = next(ln for ln in seen if "metrics at " in ln).split("metrics at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
            body = answer.read().decode()
        assert 'safehold_job_next_run_timestamp_seconds{job="database"}' in body
        assert "safehold_status_overall" in body
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "daemon: stopped (SIGTERM)" in rest
    assert "database (0 2 * * *), full (0 3 * * 0), drill (0 5 2 * *)" in "".join(seen)


# ---- one real backup through the daemon's runner ----


def test_daemon_runs_a_real_backup(db: PgTarget, repo: LocalStorage, tmp_path: Path) -> None:
    env = seed_env(db, repo.root)
    env["SAFEHOLD_RETENTION_PRUNE_AFTER_BACKUP"] = "false"  # backup only: prune is its own test
    conf = tmp_path / "safehold.toml"
    conf.write_text("")
    settings = config.load(conf, env=env)
    database = plan(settings).job("database")
    assert database is not None and database.steps == (("backup",),)
    # The settings that came from the environment travel as SAFEHOLD_* variables.
    how, _warnings = invocation(settings, for_crontab=False, environ=env)
    passed = dict(how.env)
    assert passed["SAFEHOLD_BACKUP_DIR"] == str(repo.root)
    assert passed["SAFEHOLD_DATABASE_NAME"] == db.dbname
    assert "PGPASSWORD" not in passed
    raw = io.StringIO()
    events = Recorder()
    clock = FakeClock(NOW)
    runs = run_loop(
        [database],
        TimedRunner(SubprocessRunner(how, DaemonLog(events, raw), environ=env), clock, {}),
        clock=clock,
        stop=Stop(),
        log=events,
        zone=UTC,
        max_runs=1,
    )
    assert runs[0].outcome.exit_code == 0, runs[0].outcome.detail + raw.getvalue()
    records = catalog.scan(repo)
    assert [(r.kind, r.status) for r in records] == [("globals", "ok"), ("database", "ok")]
    assert records[0].manifest is not None and records[0].manifest.target == db.dbname
    assert "backing up database" in raw.getvalue() or records[0].name in raw.getvalue()
