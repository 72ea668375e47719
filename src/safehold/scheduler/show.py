"""What ``safehold schedule show`` reports: each job, its schedule, its crontab line, whether
that line is installed, and its next runs. A pure function of settings, crontab and ``now``."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from ..config import Settings
from ..errors import ToolError
from .crontab import CrontabRef, Installed, cron_line, other_backups, ours
from .invocation import Invocation, invocation
from .jobs import Schedule, next_runs, plan, zone_name


def describe(
    settings: Settings,
    ref: CrontabRef,
    *,
    now: datetime,
    zone: tzinfo,
    count: int = 3,
    how: Invocation | None = None,
) -> dict[str, Any]:
    schedule: Schedule = plan(settings)
    warnings: list[str] = []
    if how is None:
        how, warnings = invocation(settings, for_crontab=True)
    error: str | None = None
    found: list[Installed] = []
    others: list[str] = []
    try:
        lines = ref.read()
        found, others = ours(lines), other_backups(lines)
    except ToolError as exc:
        error = exc.message
    jobs = []
    for job in schedule.jobs:
        line = cron_line(job, how)
        mine = [entry for entry in found if entry.job == job.name]
        jobs.append(
            {
                "job": job.name,
                "schedule": job.expression,
                "what": job.what,
                "commands": [how.argv(step) for step in job.steps],
                "cron_line": line,
                "installed": _state(line, mine, error),
                "installed_line": mine[0].line if mine else None,
                "next_runs": [
                    {
                        "local": t.isoformat(),
                        "utc": t.astimezone(UTC).isoformat(),
                        "zone": t.tzname(),
                    }
                    for t in next_runs(job.expression, now, count, zone)
                ],
            }
        )
    configured = {job.name for job in schedule.jobs}
    warnings += full_without_volumes(settings, schedule)
    goals = settings.objectives_s()
    if not settings.log_file:
        warnings.append(
            "log_file is not set: scheduled runs log nothing (their warnings and errors go to "
            "cron's mail; safehold list/status show what ran)"
        )
    return {
        "crontab": ref.describe(),
        "crontab_error": error,
        "timezone": zone_name(zone, now),
        "now": now.isoformat(),
        "log_file": str(settings.log_file) if settings.log_file else None,
        "jobs": jobs,
        "not_scheduled": [{"job": s.name, "reason": s.reason} for s in schedule.not_scheduled],
        "stale": [
            {"job": entry.job, "line": entry.line} for entry in found if entry.job not in configured
        ],
        "other_backups": others,  # the crontab's own backup lines (the seed's backup.sh)
        "warnings": warnings,
        "rpo": {
            "database_s": goals.rpo("database", settings.database.name),
            "volumes_s": goals.rpo("volume", ""),
            "grace_percent": settings.objectives.grace_percent,
            "grace_minutes": settings.objectives.grace_minutes,
        },
    }


def full_without_volumes(settings: Settings, schedule: Schedule) -> list[str]:
    """The weekly full-system job with no volumes configured is a second database backup:
    the volumes are never backed up, and nothing else says so."""
    full = schedule.job("full")
    chosen = settings.volumes
    if full is None or chosen.include or chosen.labels:
        return []
    return [
        f"the full-system job (full, {full.expression}) backs up no volumes: [volumes] include "
        "and labels are empty, so each run is the database only; name the volumes "
        '(include = ["app-data", "user-*"]) or labels'
    ]


def _state(line: str, mine: list[Installed], error: str | None) -> str:
    if error is not None:
        return "unknown"
    if not mine:
        return "no"
    if len(mine) == 1 and mine[0].line == line:
        return "yes"
    if not any(entry.enabled for entry in mine):
        return "disabled"
    return "differs"


def render_text(report: dict[str, Any]) -> list[str]:
    """The report as lines for a terminal or a log."""
    lines = [f"schedule in the {report['crontab']}; times in {report['timezone']} (cron's zone)"]
    if report["crontab_error"]:
        lines.append(f"  the crontab cannot be read: {report['crontab_error']}")
    state = {
        "yes": "installed",
        "no": "not installed (safehold schedule install)",
        "differs": "installed line differs (safehold schedule install updates it)",
        "disabled": "commented out in the crontab",
        "unknown": "crontab unreadable",
    }
    width = max((len(j["job"]) for j in report["jobs"]), default=8)
    cron_width = max((len(j["schedule"]) for j in report["jobs"]), default=9)
    for job in report["jobs"]:
        lines.append(
            f"{job['job']:<{width}}  {job['schedule']:<{cron_width}}  {state[job['installed']]}"
        )
        lines.append(f"{'':<{width}}  what:     {job['what']}")
        lines.append(f"{'':<{width}}  crontab:  {job['cron_line']}")
        times = [_when(t) for t in job["next_runs"]]
        for number, when in enumerate(times):
            lines.append(f"{'':<{width}}  {'next:' if number == 0 else '':<10}{when}")
    for skipped in report["not_scheduled"]:
        lines.append(f"{skipped['job']:<{width}}  not scheduled: {skipped['reason']}")
    for stale in report["stale"]:
        lines.append(
            f"{stale['job']:<{width}}  in the crontab but no longer configured "
            f"(safehold schedule install removes it): {stale['line']}"
        )
    lines.extend(
        f"note: the crontab also runs a backup of its own ('schedule install --replace-seed' "
        f"comments it out): {line}"
        for line in report["other_backups"]
    )
    rpo = report["rpo"]
    lines.append(
        f"RPO: database {_span(rpo['database_s'])}, volumes {_span(rpo['volumes_s'])} (from "
        f"the schedule unless [objectives] sets them); late after the RPO + "
        f"{rpo['grace_percent']:g} % (at least {rpo['grace_minutes']:g} min)"
    )
    lines.extend(f"note: {warning}" for warning in report["warnings"])
    return lines


def _span(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} d" if days >= 2 and days == int(days) else f"{seconds / 3600:g} h"


def _when(run: dict[str, str]) -> str:
    moment = datetime.fromisoformat(run["local"])
    text = f"{moment:%a %Y-%m-%d %H:%M} {run['zone']}"
    if moment.utcoffset():
        text += f" ({datetime.fromisoformat(run['utc']):%Y-%m-%d %H:%M} UTC)"
    return text
