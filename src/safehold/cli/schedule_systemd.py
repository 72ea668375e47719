"""``safehold schedule install|show|remove --systemd``: the schedule as systemd timers. The
engine is ``scheduler.systemd``; this file turns flags into a unit folder and results into
lines (or JSON)."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..errors import ToolError, UsageError
from ..scheduler import CrontabRef, invocation, local_zone, ours, plan
from ..scheduler.systemd import (
    UnitChange,
    UnitDir,
    default_dir,
    describe_units,
    install_units,
    remove_units,
    render_units,
    unit_files,
)
from ..scheduler.systemd.show import skipped_warnings
from .runtime import Runtime


def unit_dir(user: str | None, given: Path | None) -> UnitDir:
    """``--user`` (bare: your own user units) and ``--unit-dir`` as a folder."""
    if user and user != getpass.getuser():
        raise UsageError(
            f"--systemd --user {user}: user units belong to the user who runs them",
            hint=f"run it as {user} (sudo -u {user} -i safehold schedule install --systemd "
            "--user), or install system units: leave out --user",
        )
    user_mode = user is not None
    path = Path(os.path.abspath(given)) if given is not None else default_dir(user_mode)
    return UnitDir(path, user_mode)


def install(rt: Runtime, where: UnitDir, *, dry_run: bool, enable: bool, as_json: bool) -> None:
    settings = rt.settings
    schedule = plan(settings)
    if not schedule.jobs:
        raise UsageError("nothing to schedule: every job is off", hint="see [schedule]")
    how, warnings = invocation(settings, for_crontab=True)
    files = unit_files(settings, schedule, how, user_mode=where.user_mode)
    change = install_units(where, files, dry_run=dry_run, enable=enable)
    if warnings:
        rt.sink_info("a systemd service, like a cron job, starts with an empty environment:")
    for warning in warnings:
        rt.sink_warning(warning)
    for warning in skipped_warnings(schedule, local_zone(), datetime.now(UTC)):
        rt.sink_warning(warning)
    for skipped in schedule.not_scheduled:
        rt.sink_info(f"{skipped.name} not scheduled: {skipped.reason}")
    _warn_about_crontab(rt)
    for name in change.foreign:
        rt.sink_info(f"left alone: {name} (not written by safehold)")
    verb, gone = ("would write", "would remove") if dry_run else ("wrote", "removed")
    stale = f", {gone} {len(change.removed)} of jobs no longer configured"
    rt.sink_info(
        f"schedule: {verb} {len(change.written)} units in the {where.describe()} "
        f"({len(change.unchanged)} already as they should be{stale if change.removed else ''})"
    )
    _say_systemctl(rt, where, change, dry_run=dry_run, enable=enable, installing=True)
    if as_json:
        rt.emit_json(_result(where, change, dry_run) | {"units": {u.name: u.text for u in files}})
    elif dry_run:
        for unit in files:
            click.echo(f"# --- {where.path / unit.name}")
            click.echo(unit.text, nl=False)
    else:
        for unit in files:
            click.echo(str(where.path / unit.name))


def show(rt: Runtime, where: UnitDir, *, as_json: bool) -> None:
    how, _warnings = invocation(rt.settings, for_crontab=True)
    report = describe_units(rt.settings, where, how, now=datetime.now(UTC), zone=local_zone())
    if as_json:
        rt.emit_json(report)
    else:
        for line in render_units(report):
            click.echo(line)


def remove(rt: Runtime, where: UnitDir, *, dry_run: bool, as_json: bool) -> None:
    change = remove_units(where, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    rt.sink_info(
        f"schedule: {verb} {len(change.removed)} units from the {where.describe()} "
        f"({len(change.foreign)} safehold-* units not written by safehold left alone)"
    )
    _say_systemctl(rt, where, change, dry_run=dry_run, enable=False, installing=False)
    if as_json:
        rt.emit_json(_result(where, change, dry_run))
    else:
        for name in change.removed:
            click.echo(str(where.path / name))


def _result(where: UnitDir, change: UnitChange, dry_run: bool) -> dict[str, Any]:
    return {
        "unit_dir": str(where.path),
        "mode": "user" if where.user_mode else "system",
        "live": where.live,
        "dry_run": dry_run,
        "written": change.written,
        "unchanged": change.unchanged,
        "removed": change.removed,
        "foreign": change.foreign,
        "systemctl": change.systemctl,
    }


def _say_systemctl(
    rt: Runtime, where: UnitDir, change: UnitChange, *, dry_run: bool, enable: bool,
    installing: bool,
) -> None:  # fmt: skip
    for line in change.systemctl:
        (rt.sink_warning if ": failed" in line else rt.sink_info)(line)
    if dry_run or change.systemctl or not change.changed:
        return
    user = " --user" if where.user_mode else ""
    if where.live:
        if installing and not enable:
            rt.sink_info(f"timers not enabled (--no-enable): systemctl{user} enable --now ...")
        return
    why = (
        "it is not the folder systemd reads"
        if where.path != default_dir(where.user_mode)
        else "systemd is not running here"
    )
    todo = "daemon-reload, then enable --now safehold-*.timer" if installing else "daemon-reload"
    rt.sink_info(f"systemctl was not run ({why}): on the host run systemctl{user} {todo}")


def _warn_about_crontab(rt: Runtime) -> None:
    """Timers and crontab lines together would run every job twice."""
    try:
        lines = CrontabRef().read()
    except ToolError:
        return  # no cron here: nothing to run the jobs twice
    doubled = [entry.job for entry in ours(lines) if entry.enabled]
    if doubled:
        rt.sink_warning(
            f"your crontab also runs {', '.join(doubled)}: every job would run twice; "
            "'safehold schedule remove' takes safehold's lines out of the crontab"
        )
