"""What ``safehold schedule show --systemd`` reports: each job's timer and service, whether the
folder holds them as install would write them, their ``OnCalendar=`` lines and next runs, and
the units of ours no longer configured. A pure function of settings, the folder and ``now``
(plus ``systemctl is-enabled`` on the live folder)."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from ...config import Settings
from ...errors import ConfigError
from ..invocation import Invocation
from ..jobs import Schedule, next_runs, plan, zone_name
from .calendar import skipped_days
from .unitdir import UnitDir, enabled_states
from .units import unit_files


def describe_units(
    settings: Settings,
    where: UnitDir,
    how: Invocation,
    *,
    now: datetime,
    zone: tzinfo,
    count: int = 3,
) -> dict[str, Any]:
    schedule = plan(settings)
    ours, foreign = where.read()
    jobs = []
    configured: set[str] = set()
    for job in schedule.jobs:
        entry: dict[str, Any] = {"job": job.name, "schedule": job.expression, "what": job.what}
        try:
            files = unit_files(settings, Schedule((job,), ()), how, user_mode=where.user_mode)
        except ConfigError as exc:
            entry.update(state="refused", error=str(exc), units=[], on_calendar=[])
            jobs.append(entry)
            continue
        names = [unit.name for unit in files]
        configured.update(names)
        have = [ours.get(name) for name in names]
        if all(unit is None for unit in have):
            state = "no"
        elif all(
            old is not None and old.text == new.text for old, new in zip(have, files, strict=True)
        ):
            state = "yes"
        else:
            state = "differs"
        timer = next(unit for unit in files if unit.name.endswith(".timer"))
        entry.update(
            state=state,
            units=names,
            on_calendar=[
                line.removeprefix("OnCalendar=")
                for line in timer.text.splitlines()
                if line.startswith("OnCalendar=")
            ],
            next_runs=[
                {"local": t.isoformat(), "utc": t.astimezone(UTC).isoformat()}
                for t in next_runs(job.expression, now, count, zone)
            ],
        )
        jobs.append(entry)
    enabled = enabled_states(where, [n for n in sorted(ours) if n.endswith(".timer")])
    for entry in jobs:
        timer_names = [n for n in entry["units"] if n.endswith(".timer")]
        entry["enabled"] = enabled.get(timer_names[0]) if timer_names else None
    return {
        "unit_dir": str(where.path),
        "mode": "user" if where.user_mode else "system",
        "live": where.live,
        "timezone": zone_name(zone, now),
        "now": now.isoformat(),
        "jobs": jobs,
        "not_scheduled": [{"job": s.name, "reason": s.reason} for s in schedule.not_scheduled],
        "stale": sorted(set(ours) - configured),
        "foreign": foreign,
        "warnings": skipped_warnings(schedule, zone, now),
    }


def skipped_warnings(schedule: Schedule, zone: tzinfo, now: datetime) -> list[str]:
    """A job whose time the clock skips on a daylight saving night: the timer misses it."""
    found = []
    for job in schedule.jobs:
        days = skipped_days(job.expression, zone, now)
        if days:
            found.append(
                f"the {job.name} job ({job.expression}) falls in the hour the clock skips on "
                f"{days[0].isoformat()} ({zone_name(zone, now)}): systemd skips that run (cron "
                "runs it right after the jump); move it out of that hour, or keep the host in UTC"
            )
    return found


def render_units(report: dict[str, Any]) -> list[str]:
    where = f"{report['mode']} unit folder {report['unit_dir']}"
    lines = [f"systemd timers in the {where}; times in {report['timezone']}"]
    if not report["live"]:
        lines.append("  (not the folder of a running systemd: enabled state unknown)")
    state = {
        "yes": "installed",
        "no": "not installed (safehold schedule install --systemd)",
        "differs": "installed units differ (safehold schedule install --systemd updates them)",
        "refused": "cannot be a timer",
    }
    width = max((len(j["job"]) for j in report["jobs"]), default=8)
    for job in report["jobs"]:
        shown = state[job["state"]]
        if job.get("enabled"):
            shown += f", timer {job['enabled']}"
        lines.append(f"{job['job']:<{width}}  {job['schedule']}  {shown}")
        if job["state"] == "refused":
            lines.append(f"{'':<{width}}  {job['error']}")
            continue
        lines.append(f"{'':<{width}}  units:    {' '.join(job['units'])}")
        lines.extend(f"{'':<{width}}  calendar: {spec}" for spec in job["on_calendar"])
        if job["next_runs"]:
            first = datetime.fromisoformat(job["next_runs"][0]["local"])
            lines.append(f"{'':<{width}}  next:     {first:%a %Y-%m-%d %H:%M %Z}")
    for skipped in report["not_scheduled"]:
        lines.append(f"{skipped['job']:<{width}}  not scheduled: {skipped['reason']}")
    lines.extend(
        f"stale: {name} (no longer configured; safehold schedule install --systemd removes it)"
        for name in report["stale"]
    )
    lines.extend(f"not safehold's, left alone: {name}" for name in report["foreign"])
    lines.extend(f"note: {warning}" for warning in report["warnings"])
    return lines
