"""The schedule as configuration: which jobs run when. One definition serves the crontab
(``safehold schedule install``) and the foreground daemon (``safehold daemon``).

A job is a cron expression and the safehold commands it runs, one after the other, each only
when the one before succeeded (``backup`` then ``prune``). Times are the machine's local time,
as cron reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..config import Settings
from ..config.cadence import OFF, check_expression, firings

# The hourly backup waits this long for the repository lock (a weekly full backup or a drill
# holding it at the top of the hour delays it instead of failing it; it never waits into the
# next hour's run). Only raised, never lowered, from lock_timeout.
HOURLY_LOCK_WAIT_S = 3000.0


@dataclass(frozen=True)
class Job:
    name: str
    expression: str  # five cron fields (or @daily...), local time
    steps: tuple[tuple[str, ...], ...]  # safehold arguments, one command each
    what: str  # a few words for people

    @property
    def marker(self) -> str:
        """The comment that marks this job's line in a crontab."""
        return f"safehold:{self.name}"


@dataclass(frozen=True)
class NotScheduled:
    name: str
    reason: str


@dataclass(frozen=True)
class Schedule:
    jobs: tuple[Job, ...]
    not_scheduled: tuple[NotScheduled, ...]

    def job(self, name: str) -> Job | None:
        return next((j for j in self.jobs if j.name == name), None)


def plan(settings: Settings) -> Schedule:
    """The jobs ``settings`` asks for, in the order the daemon runs jobs that are due together;
    a bad cron expression is a ``ConfigError`` naming its key."""
    s = settings.schedule
    prune: tuple[tuple[str, ...], ...] = (
        (("prune",),) if settings.retention.prune_after_backup else ()
    )
    then_prune = ", then prune" if prune else ""
    jobs: list[Job] = []
    skipped: list[NotScheduled] = []

    def add(name: str, key: str, steps: tuple[tuple[str, ...], ...], what: str) -> None:
        expression = " ".join(str(getattr(s, key)).split())
        if expression.lower() in OFF:
            skipped.append(NotScheduled(name, f"schedule.{key} is off"))
            return
        check_expression(expression, f"schedule.{key}")
        jobs.append(Job(name, expression, steps, what))

    add("database", "database", (("backup",), *prune), "database backup" + then_prune)
    add("full", "full", (("backup", "--all"), *prune), "full-system backup" + then_prune)
    if not s.hourly:
        skipped.append(NotScheduled("hourly", "schedule.hourly is false"))
    else:
        daily = next((j.expression for j in jobs if j.name == "database"), None)
        hourly = hourly_expression(daily)
        backup: tuple[str, ...] = ("backup",)
        if settings.lock_timeout < HOURLY_LOCK_WAIT_S:
            backup = ("backup", "--lock-timeout", f"{HOURLY_LOCK_WAIT_S:g}")
        if hourly is None:
            skipped.append(NotScheduled("hourly", "the database backup already runs every hour"))
        else:
            jobs.append(
                Job("hourly", hourly, (backup, *prune), "hourly database backup" + then_prune)
            )
    if not s.archive_location:
        skipped.append(
            NotScheduled(
                "archive",
                "schedule.archive_location is empty: set it to the location the monthly "
                "archive copy goes to",
            )
        )
    else:
        where = s.archive_location
        # The month's representatives only (retention's monthly choice), not every backup.
        copy = ("copy", "--to", where, "--representative", "monthly")
        add("archive", "archive", (copy,), f"archive copy of each month's backups to {where}")
    add("drill", "drill", (("drill", "--latest"),), "restore drill of the newest backups")
    # Job names are one word: the crontab marker (``# safehold:<job>``) is [a-z]+.
    rehearse = ("drill", "--full-system", "--set", "latest")
    add("quarterly_drill", "quarterly_drill", (rehearse,), "full-system DR rehearsal")
    add(
        "annual_drill",
        "annual_drill",
        ((*rehearse, "--sandbox"),),
        "full recovery test of the newest set on a throwaway cluster",
    )
    return Schedule(tuple(jobs), tuple(skipped))


def hourly_expression(daily: str | None) -> str | None:
    """Minute 0 of every hour, except the hours in which the daily database backup already
    runs at minute 0 (when it runs every day), so the two never start together. ``None`` when
    no hour is left."""
    if daily is None:
        return "0 * * * *"
    (minutes, hours, days, months, weekdays), _ = croniter.expand(daily)
    if 0 not in minutes or [days, months, weekdays] != [["*"], ["*"], ["*"]]:
        return "0 * * * *"
    taken = set(range(24)) if hours == ["*"] else {int(h) for h in hours}
    left = [h for h in range(24) if h not in taken]
    if not left:
        return None
    return f"0 {_ranges(left)} * * *"


def _ranges(values: list[int]) -> str:
    parts: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


def next_runs(
    expression: str, after: datetime, count: int = 3, zone: tzinfo | None = None
) -> list[datetime]:
    """The next ``count`` times strictly after ``after``, in ``zone`` (default: local)."""
    return firings(expression, after.astimezone(zone or local_zone()), count)


def local_zone() -> tzinfo:
    """The zone cron uses: ``TZ``, else /etc/localtime (with its daylight saving rules)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as data:
            return ZoneInfo.from_file(data, key="localtime")
    except (OSError, ValueError):
        fallback = datetime.now().astimezone().tzinfo
        assert fallback is not None
        return fallback


def zone_name(zone: tzinfo, at: datetime) -> str:
    """``Europe/Berlin`` when known, else the abbreviation at ``at`` (``CET``, ``UTC``)."""
    key = getattr(zone, "key", None)
    if key and key != "localtime":
        return str(key)
    return at.astimezone(zone).tzname() or "local time"
