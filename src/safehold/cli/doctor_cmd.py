from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import config
from ..crypto import DecryptionKey
from ..errors import ConfigError, SafeholdError
from ..operations.checks.doctor.run import RESULTS, Check, DoctorSetup, run_checks
from ..operations.checks.doctor.wal import Need
from ..storage import Storage
from . import json_output
from .flags import shared_options
from .runtime import runtime

RESULT_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


@click.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print the checks as JSON: [{check, result, detail, fix}]",
)
@shared_options
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the setup and say what to fix: OK, WARN, FAIL or SKIP per check.

    Checks the configuration, the backup folder (writable; no backup or manifest readable by
    group or others), free space against the newest backups' size, each storage location (a
    probe file), the database server (TCP and protocol), the login and the database, the rights a
    restore needs (CREATEDB and ownership of the database, or superuser), the roles the newest
    backup's globals name (present here, or creatable by this role: CREATEROLE), pg_dump and
    pg_restore against the server's version, each [locations.NAME] (a probe object, the lock,
    unfinished uploads), the data folder's free space and WAL archiving (the archiver's failures;
    the archive_command's program, repository, config, log and key files as the server's OS
    user) when the server runs on this host, leftovers of interrupted runs, ./scripts/backup.sh
    and restore.sh, the Docker engine and each configured volume (only when volumes are
    configured or DOCKER_HOST is set).

    Exit code 0 when no check FAILs (WARN and SKIP included), 1 when any check FAILs. A check
    never stops the others; nothing is changed but the probe file, written and removed again.
    """
    try:
        rt = runtime(ctx, as_json=as_json)
    except ConfigError as exc:  # a broken config is a finding too, reported like the others
        broken = Check("config", "FAIL", exc.message, exc.hint or "")
        _report([broken], Console() if sys.stdout.isatty() else Console(width=250), as_json)
        raise _DoctorFailed([broken], 1) from None
    with rt:
        settings = rt.settings
        checks = [_config_check(settings), *run_checks(_setup(settings), rt.sink)]
        _report(checks, rt.out, as_json)
        failed = [c for c in checks if c.result == "FAIL"]
        if failed:
            raise _DoctorFailed(failed, len(checks))


def _setup(settings: config.Settings) -> DoctorSetup:
    """The seed's scripts are looked for in ./scripts and beside the config file."""
    folders = [Path.cwd() / "scripts"]
    if settings.source != "defaults":
        folders.append(Path(settings.source).absolute().parent / "scripts")
    unique = list(dict.fromkeys(folder.resolve() for folder in folders))
    volumes = settings.volumes
    return DoctorSetup(
        target=settings.pg_target(),
        backup_dir=settings.backup_dir,
        volume_include=volumes.include,
        volume_labels=volumes.labels,
        volume_exclude=volumes.exclude,
        script_dirs=tuple(unique),
        docker_host=os.environ.get("DOCKER_HOST") or None,
        key=_key(settings),
        locations=_locations(settings),
        archive_needs=_archive_needs,
        full_schedule=_full_schedule(settings),
    )


def _full_schedule(settings: config.Settings) -> str | None:
    """The full-system job's cron expression; None when it is off (or the schedule is invalid:
    the 'config' check reports that)."""
    from ..scheduler.jobs import plan

    try:
        job = plan(settings).job("full")
    except ConfigError:
        return None
    return job.expression if job is not None else None


def _locations(settings: config.Settings) -> tuple[tuple[str, Storage], ...]:
    if not settings.locations:
        return ()  # boto3 loads only when there is a location
    from .locations import locations

    return tuple((place.name, place.storage) for place in locations(settings))


def _archive_needs(config_file: Path | None) -> list[Need]:
    """The files wal-push reads or writes under the config the server's archive_command names,
    loaded as the server loads it: that file, without our environment."""
    if config_file is None:
        return []
    settings = config.load(config_file, env={}, absolute=True)
    enc = settings.encryption
    needs = [Need("log file", settings.log_file, "append")] if settings.log_file else []
    for what, path in (
        ("age recipients file", enc.recipients_file),
        ("passphrase file", enc.passphrase_file),
        *[(f"credentials of location {p.name}", p.credentials_file) for p in settings.locations],
        *[(f"CA bundle of location {p.name}", p.ca_bundle) for p in settings.locations],
    ):
        if path is not None:
            needs.append(Need(what, path, "read"))
    if enc.passphrase_command:
        program = shlex.split(enc.passphrase_command)[0]
        needs.append(Need("passphrase command", Path(shutil.which(program) or program), "run"))
    return needs


def _key(settings: config.Settings) -> DecryptionKey | None:
    """The configured identity, when it loads: doctor reads the newest backup's globals with it
    (a key that does not load is the encryption check's finding, not a reason to stop)."""
    try:
        return settings.decryption_key()
    except SafeholdError:
        return None


def _config_check(settings: config.Settings) -> Check:
    source = "defaults" if settings.source == "defaults" else f"the file {settings.source}"
    password = "set" if settings.password else "not set (libpq may read ~/.pgpass)"
    detail = (
        f"settings from {source}, the environment and flags; BACKUP_DIR {settings.backup_dir}; "
        f"database {settings.pg_target().where()}; password {password}"
    )
    return Check("config", "OK", detail)


def _report(checks: list[Check], out: Console, as_json: bool) -> None:
    if as_json:
        click.echo(json_output.dumps([c.to_json() for c in checks], sort_keys=False))
    elif out.is_terminal:
        _table(checks, out)
    else:
        width = max(len(c.check) for c in checks)
        for check in checks:
            click.echo(f"{check.result:<4}  {check.check:<{width}}  {check.detail}")
            if check.fix:
                click.echo(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    if not as_json:
        click.echo(_summary(checks))


def _table(checks: list[Check], console: Console) -> None:
    table = Table(title="safehold doctor", title_justify="left", show_lines=True)
    table.add_column("CHECK", no_wrap=True)
    table.add_column("RESULT", no_wrap=True)
    table.add_column("DETAIL", ratio=3)
    table.add_column("FIX", ratio=2)
    for check in checks:
        table.add_row(
            Text(check.check),
            Text(check.result, style=RESULT_STYLE[check.result]),
            Text(check.detail),
            Text(check.fix),
        )
    console.print(table)


def _summary(checks: list[Check]) -> str:
    counts = Counter(c.result for c in checks)
    total = f"{len(checks)} check{'s' * (len(checks) != 1)}"
    return f"{total}: " + ", ".join(f"{counts[r]} {r}" for r in RESULTS)


class _DoctorFailed(click.ClickException):
    """Exit code 1 after the report was printed: the error lines go to stderr only, so --json
    output stays one JSON document."""

    exit_code = 1

    def __init__(self, failed: list[Check], total: int) -> None:
        names = ", ".join(c.check for c in failed)
        super().__init__(f"{len(failed)} of {total} checks failed: {names}")

    def show(self, file: IO[Any] | None = None) -> None:
        prefix = "" if sys.stderr.isatty() else f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} ERROR   "
        click.echo(f"{prefix}error: {self.message}", err=True)
        click.echo(f"{prefix}hint: each failed check says how to fix it (FIX)", err=True)
