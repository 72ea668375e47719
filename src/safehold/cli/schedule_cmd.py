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
    return click.option(
        "--user",
        metavar="NAME",
        default=None,
        help="this user's crontab (crontab -u NAME; needs root) instead of your own",
    )(func)


def _ref(user: str | None, crontab_file: Path | None) -> CrontabRef:
    if user and crontab_file:
        raise UsageError("give --user or --crontab-file, not both")
    return CrontabRef(user=user, file=crontab_file.absolute() if crontab_file else None)


@click.group("schedule")
def schedule_cmd() -> None:
    """The backup schedule ([schedule] in the config) in your crontab: install, show, remove.

    Jobs: database backup (daily 02:00), full-system backup (weekly), archive copy (monthly,
    with schedule.archive_location), restore drill (monthly), optional hourly database backups;
    each backup is followed by prune (retention.prune_after_backup). Every crontab line carries
    a '# safehold:<job>' marker: install replaces only those lines, remove deletes only those.
    Without cron (containers), 'safehold daemon' runs the same schedule.
    """


@schedule_cmd.command("show")
@_crontab_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def show(ctx: click.Context, user: str | None, crontab_file: Path | None, as_json: bool) -> None:
    """Each job: its cron schedule, its crontab line, whether that line is installed, and its
    next three runs (local time and UTC); jobs that are not scheduled and why."""
    ref = _ref(user, crontab_file)
    with runtime(ctx, as_json=as_json) as rt:
        report = describe(rt.settings, ref, now=datetime.now(UTC), zone=local_zone())
        if as_json:
            rt.emit_json(report)
        else:
            for line in render_text(report):
                click.echo(line)


@schedule_cmd.command("install")
@_crontab_options
@click.option("--dry-run", is_flag=True, help="print the lines, change nothing")
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
    dry_run: bool,
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
    """
    ref = _ref(user, crontab_file)
    with runtime(ctx) as rt:
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
@shared_options
@click.pass_context
def remove_cmd(
    ctx: click.Context, user: str | None, crontab_file: Path | None, dry_run: bool
) -> None:
    """Delete safehold's lines (marked '# safehold:<job>') from the crontab; nothing else."""
    ref = _ref(user, crontab_file)
    with runtime(ctx) as rt:
        change = remove(ref, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        rt.sink_info(f"schedule: {verb} {len(change.removed)} lines from the {ref.describe()}")
        for line in change.switched:
            again = "would switch back on" if dry_run else "switched back on"
            rt.sink_info(f"{again} the crontab's own line that install had commented out: {line}")
        for line in change.removed:
            click.echo(line)
