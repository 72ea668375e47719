from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import UsageError
from ..scheduler import (
    CrontabRef,
    Job,
    cron_line,
    install,
    invocation,
    local_zone,
    plan,
    remove,
)
from ..scheduler.crontab import Change
from ..scheduler.show import describe, render_text
from ..scheduler.systemd import UnitDir
from . import schedule_systemd as _systemd
from .flags import shared_options
from .runtime import runtime

F = TypeVar("F", bound=Callable[..., Any])


def _crontab_options(func: F) -> F:
    func = click.option(
        "--crontab-file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="a crontab file (user format, as 'crontab FILE' takes) instead of the user's crontab",
    )(func)
    func = click.option(
        "--user",
        metavar="[NAME]",
        is_flag=False,
        flag_value="",
        default=None,
        help="this user's crontab (crontab -u NAME; needs root) instead of your own; with "
        "--systemd and no NAME: your user units (~/.config/systemd/user)",
    )(func)
    func = click.option(
        "--unit-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="with --systemd: this folder instead of /etc/systemd/system (or "
        "~/.config/systemd/user with --user); systemctl is not run for it",
    )(func)
    return click.option(
        "--systemd",
        is_flag=True,
        help="systemd timers and services (safehold-<job>.timer/.service) instead of crontab lines",
    )(func)


def _ref(user: str | None, crontab_file: Path | None, unit_dir: Path | None = None) -> CrontabRef:
    if user and crontab_file:
        raise UsageError("give --user or --crontab-file, not both")
    if user == "":
        raise UsageError(
            "--user needs a NAME for a crontab", hint="--user NAME, or --systemd --user"
        )
    if unit_dir is not None:
        raise UsageError("--unit-dir goes with --systemd", hint="add --systemd")
    return CrontabRef(user=user, file=crontab_file.absolute() if crontab_file else None)


def _unit_dir(
    user: str | None, crontab_file: Path | None, unit_dir: Path | None, **cron_only: bool
) -> UnitDir:
    given = [f"--{name.replace('_', '-')}" for name, on in cron_only.items() if on]
    if crontab_file is not None or given:
        raise UsageError(
            f"{' '.join(given or ['--crontab-file'])} goes with the crontab, not --systemd"
        )
    return _systemd.unit_dir(user, unit_dir)


@click.group("schedule")
def schedule_cmd() -> None:
    """The backup schedule ([schedule] in the config) in your crontab, or as systemd timers
    (--systemd): install, show, remove.

    Jobs: database backup (daily 02:00), full-system backup (weekly), archive copy (monthly,
    with schedule.archive_location), restore drill (monthly), optional hourly database backups;
    each backup is followed by prune (retention.prune_after_backup). Every crontab line carries
    a '# safehold:<job>' marker: install replaces only those lines, remove deletes only those.
    Without cron (containers), 'safehold daemon' runs the same schedule.

    With --systemd each job is a safehold-<job>.timer (the cron expression as OnCalendar=)
    and a hardened safehold-<job>.service running the same commands; the units' first line
    marks them as safehold's (docs/guide/systemd.md).
    """


@schedule_cmd.command("show")
@_crontab_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def show(
    ctx: click.Context,
    user: str | None,
    crontab_file: Path | None,
    unit_dir: Path | None,
    systemd: bool,
    as_json: bool,
) -> None:
    """Each job: its cron schedule, its crontab line, whether that line is installed, and its
    next three runs (local time and UTC); jobs that are not scheduled and why. With --systemd:
    its units, whether the folder holds them as install writes them, their OnCalendar= lines
    (and, on a running systemd, whether the timer is enabled)."""
    if systemd:
        where = _unit_dir(user, crontab_file, unit_dir)
        with runtime(ctx, as_json=as_json) as rt:
            _systemd.show(rt, where, as_json=as_json)
        return
    ref = _ref(user, crontab_file, unit_dir)
    with runtime(ctx, as_json=as_json) as rt:
        report = describe(rt.settings, ref, now=datetime.now(UTC), zone=local_zone())
        if as_json:
            rt.emit_json(report)
        else:
            for line in render_text(report):
                click.echo(line)


@schedule_cmd.command("install")
@_crontab_options
@click.option("--dry-run", is_flag=True, help="print the lines (or units), change nothing")
@click.option(
    "--no-enable",
    is_flag=True,
    help="with --systemd: write the units but do not enable and start the timers",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable result")
@click.option(
    "--replace-seed",
    is_flag=True,
    help="comment out the crontab's own backup lines (the seed's 'scripts/backup.sh' line): "
    "the database job takes their place; 'schedule remove' puts them back",
)
@shared_options
@click.pass_context
def install_cmd(
    ctx: click.Context,
    user: str | None,
    crontab_file: Path | None,
    unit_dir: Path | None,
    systemd: bool,
    dry_run: bool,
    no_enable: bool,
    as_json: bool,
    replace_seed: bool,
) -> None:
    """Write the schedule into the crontab (again: replaces its own lines, leaves others).

    Each job runs 'cd <this folder> && <safehold> <command> --config <file> -q >/dev/null':
    safehold appends its log lines to log_file; warnings and errors also go to cron's mail.
    Settings given as flags or environment variables are written as SAFEHOLD_* variables on
    the job's line; the password never is (use database.password_file or ~/.pgpass), and
    every other variable a job needs that cron will not have is a warning saying what to use.
    A backup line of the crontab's own (the seed's scripts/backup.sh) is left as it is, with a
    warning, unless --replace-seed.

    With --systemd: a safehold-<job>.service and .timer per job, written atomically into
    /etc/systemd/system (--user: ~/.config/systemd/user; --unit-dir: any folder); units of
    jobs no longer configured are removed, units not written by safehold are never touched.
    On the folder a running systemd reads it runs 'systemctl daemon-reload' and 'enable
    --now' on the timers (not with --no-enable).
    """
    if systemd:
        where = _unit_dir(user, crontab_file, unit_dir, replace_seed=replace_seed)
        with runtime(ctx, as_json=as_json) as rt:
            _systemd.install(rt, where, dry_run=dry_run, enable=not no_enable, as_json=as_json)
        return
    if no_enable:
        raise UsageError("--no-enable goes with --systemd", hint="add --systemd")
    ref = _ref(user, crontab_file, unit_dir)
    with runtime(ctx, as_json=as_json) as rt:
        settings = rt.settings
        schedule = plan(settings)
        if not schedule.jobs:
            raise UsageError("nothing to schedule: every job is off", hint="see [schedule]")
        database_job = next((job for job in schedule.jobs if job.name == "database"), None)
        if replace_seed and database_job is None:
            raise UsageError(
                "--replace-seed: nothing would back up the database instead",
                hint="schedule.database is off; keep the crontab's own line",
            )
        how, warnings = invocation(settings, for_crontab=True)
        lines = [cron_line(job, how) for job in schedule.jobs]
        change = install(ref, lines, dry_run=dry_run, replace_others=replace_seed)
        _say_about_others(rt.sink_info, rt.sink_warning, change, database_job, dry_run)
        for warning in warnings:
            rt.sink_warning(warning)
        for skipped in schedule.not_scheduled:
            rt.sink_info(f"{skipped.name} not scheduled: {skipped.reason}")
        if not settings.log_file:
            rt.sink_warning(
                "log_file is not set: scheduled runs log nothing (warnings and errors go to "
                "cron's mail); set log_file in the config file"
            )
        elif user and user != getpass.getuser():
            rt.sink_warning(f"the log file {settings.log_file} must be writable by {user}")
        verb = "would install" if dry_run else "installed"
        if not change.changed:
            state = "already as it should be"
        elif change.removed:
            state = f"replacing {len(change.removed)} safehold lines"
        else:
            state = "new"
        rt.sink_info(
            f"schedule: {verb} {len(lines)} jobs in the {ref.describe()} ({state}; other "
            "lines untouched)"
        )
        if as_json:
            rt.emit_json(
                {"crontab": ref.describe(), "dry_run": dry_run, "changed": change.changed,
                 "lines": lines, "removed": change.removed, "switched": change.switched}
            )  # fmt: skip
            return
        for line in lines:
            click.echo(line)


def _say_about_others(
    info: Callable[[str], None],
    warn: Callable[[str], None],
    change: Change,
    database_job: Job | None,
    dry_run: bool,
) -> None:
    """What install does about the crontab's own backup lines (the seed's)."""
    for line in change.switched:
        verb = "would comment out" if dry_run else "commented out"
        info(
            f"{verb} the crontab's own backup line (the database job replaces it; "
            f"'safehold schedule remove' puts it back): {line}"
        )
    for line in change.others:
        if line in change.switched:
            continue
        if database_job is None:
            info(f"left as it is: the crontab's own backup line (schedule.database is off): {line}")
            continue
        warn(
            f"the crontab already runs a backup of its own, left as it is: {line} -- with the "
            f"database job ({database_job.expression}) the database is backed up twice; "
            "'schedule install --replace-seed' comments that line out ('schedule remove' puts "
            "it back), or delete it with 'crontab -e'"
        )


@schedule_cmd.command("remove")
@_crontab_options
@click.option("--dry-run", is_flag=True, help="print the lines that would go, change nothing")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result")
@shared_options
@click.pass_context
def remove_cmd(
    ctx: click.Context,
    user: str | None,
    crontab_file: Path | None,
    unit_dir: Path | None,
    systemd: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete safehold's lines (marked '# safehold:<job>') from the crontab; nothing else.
    With --systemd: disable safehold's timers and delete the units whose first line marks them
    as safehold's; other units, also ones named safehold-*, stay."""
    if systemd:
        where = _unit_dir(user, crontab_file, unit_dir)
        with runtime(ctx, as_json=as_json) as rt:
            _systemd.remove(rt, where, dry_run=dry_run, as_json=as_json)
        return
    ref = _ref(user, crontab_file, unit_dir)
    with runtime(ctx, as_json=as_json) as rt:
        change = remove(ref, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        rt.sink_info(f"schedule: {verb} {len(change.removed)} lines from the {ref.describe()}")
        for line in change.switched:
            again = "would switch back on" if dry_run else "switched back on"
            rt.sink_info(f"{again} the crontab's own line that install had commented out: {line}")
        if as_json:
            rt.emit_json(
                {"crontab": ref.describe(), "dry_run": dry_run, "removed": change.removed,
                 "switched": change.switched}
            )  # fmt: skip
            return
        for line in change.removed:
            click.echo(line)
