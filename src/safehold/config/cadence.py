"""How often the schedule backs each kind of target up, and the recovery objectives that
follow: a target's RPO is what ``[objectives]`` sets for it, else the interval at which
``[schedule]`` backs it up (a weekly full-system job makes the volumes' RPO a week, hourly
database backups the database's an hour).

The interval of a few cron expressions is the longest gap between consecutive firings of all
of them together: the daily database job and the weekly full-system job (which dumps the
database too) give the database 24 h. Firings are counted over a fixed stretch of calendar,
so a reading does not depend on the day it is taken, long enough for monthly and yearly
patterns. They are counted in UTC: daylight saving moves a local 02:00 job by an hour twice a
year, which the grace absorbs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..model import Objectives

if TYPE_CHECKING:
    from .schema import ObjectiveSettings, ScheduleSettings

OFF = ("", "off")  # a schedule key set to one of these turns its job off
HOURLY = "0 * * * *"  # what schedule.hourly adds, at the least (the scheduler's hourly job)
DEFAULT_RPO_S = 24 * 3600.0  # the procedures' RPO, for a kind no job backs up
_START = datetime(2025, 1, 1)  # naive: croniter counts it as UTC
_SPAN = timedelta(days=800)  # two years and a bit: a yearly pattern fires at least twice
_MAX_FIRINGS = 1000  # an every-minute job needs no more to show its gap


def check_expression(expression: str, key: str) -> None:
    """Five fields that both cron and croniter read the same way (no seconds field, no
    @reboot: the daemon could not run those)."""
    from croniter import croniter  # not at import: wal-push loads the config and must start fast
    from crontab import CronSlices

    fields = expression.split()
    ok = (
        (len(fields) == 5 or (len(fields) == 1 and expression.startswith("@")))
        and expression != "@reboot"
        and bool(croniter.is_valid(expression))
        and bool(CronSlices.is_valid(expression))
    )
    if not ok:
        raise ConfigError(
            f"{key}: {expression!r} is not a cron schedule",
            hint="five fields, minute hour day-of-month month day-of-week, e.g. '0 2 * * *' "
            "(or @daily, @weekly, @monthly; 'off' turns the job off)",
        )


def firings(expression: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` times strictly after ``after``, in ``after``'s zone (the daemon's and
    ``schedule show``'s next runs, and the intervals here)."""
    from croniter import croniter

    it = croniter(expression, after)
    return [it.get_next(datetime) for _ in range(count)]


def interval_s(expressions: dict[str, str]) -> float | None:
    """The longest gap between consecutive firings of ``expressions`` (key -> cron) together;
    None when they fire less than twice in the stretch counted (or there are none)."""
    end = _START + _SPAN
    moments: set[datetime] = set()
    for key, expression in expressions.items():
        check_expression(expression, key)
        found = _firings_until(expression, end)
        if len(found) == _MAX_FIRINGS:
            end = min(end, found[-1])  # beyond it this job's firings were not counted
        moments.update(found)
    ordered = sorted(m for m in moments if m <= end)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]
    return max(gaps) if gaps else None


def _firings_until(expression: str, end: datetime) -> list[datetime]:
    from croniter import CroniterError, croniter

    found: list[datetime] = []
    it = croniter(expression, _START)
    try:
        while len(found) < _MAX_FIRINGS:
            moment = it.get_next(datetime)
            if moment > end:
                break
            found.append(moment)
    except CroniterError:
        pass  # a date that never comes (30 February): no (more) firings
    return found


def scheduled_intervals(schedule: ScheduleSettings) -> dict[str, float | None]:
    """Per kind (``database``, ``volume``): how often the schedule backs it up (None: no job
    does, or too rarely to tell)."""

    def on(*keys: str) -> dict[str, str]:
        found = {f"schedule.{k}": " ".join(str(getattr(schedule, k)).split()) for k in keys}
        return {k: v for k, v in found.items() if v.lower() not in OFF}

    database = on("database", "full")
    if schedule.hourly:
        database["schedule.hourly"] = HOURLY
    return {"database": interval_s(database), "volume": interval_s(on("full"))}


def objectives(goals: ObjectiveSettings, schedule: ScheduleSettings) -> Objectives:
    """``[objectives]`` in seconds, with each RPO nobody set taken from the schedule. The most
    specific setting wins: per target, per kind, ``rpo_hours`` (every kind), the schedule."""
    intervals = scheduled_intervals(schedule)

    def rpo(kind_hours: float, kind: str) -> float:
        for hours in (kind_hours, goals.rpo_hours):
            if hours > 0:
                return hours * 3600
        return intervals[kind] or DEFAULT_RPO_S

    return Objectives(
        rpo_s=rpo(goals.rpo_hours_database, "database"),
        rto_database_s=goals.rto_database_minutes * 60,
        rto_volumes_s=goals.rto_volumes_minutes * 60,
        rto_full_s=goals.rto_full_minutes * 60,
        rpo_volumes_s=rpo(goals.rpo_hours_volumes, "volume"),
        rpo_targets=tuple(_per_target(goals.rpo_hours_targets)),
        grace_share=goals.grace_percent / 100,
        grace_min_s=goals.grace_minutes * 60,
    )


def _per_target(entries: Iterable[str]) -> Iterable[tuple[str, float]]:
    for entry in entries:
        name, _, hours = entry.partition("=")
        try:
            value = float(hours)
        except ValueError:
            value = 0.0
        if not name.strip() or value <= 0:
            raise ConfigError(
                f"objectives.rpo_hours_targets: {entry!r} is not NAME=HOURS",
                hint='e.g. ["user-*=168", "app-data=24"] (a target name or pattern, hours > 0)',
            )
        yield name.strip(), value * 3600
