"""``safehold pitr``: archiving setup, base backups, chain check, restore to a point in time."""

from __future__ import annotations

import click

from ..operations import pitr, wal
from ..storage import LocalStorage
from .physical import (
    COMMAND_HELP,
    PitrRequest,
    config_file,
    pitr_options,
    run_base_backup,
    run_restore,
)
from .runtime import runtime, shared_options


@click.group("pitr")
def pitr_cmd() -> None:
    """Point-in-time recovery: WAL archiving setup, base backups, chain check and restore."""


@pitr_cmd.command("setup")
@click.option("--apply", is_flag=True, help="set them on the server with ALTER SYSTEM")
@click.option("--command", "command", help=COMMAND_HELP)
@shared_options
@click.pass_context
def setup_cmd(ctx: click.Context, apply: bool, command: str | None) -> None:
    """Print (or with --apply, set) what the server needs to archive WAL into BACKUP_DIR."""
    with runtime(ctx) as rt:
        settings = wal.server_settings(
            command or wal.which_safehold(), rt.settings.backup_dir, config_file(rt)
        )
        for name, value in settings.items():
            rt.out.print(f"{name} = '{value}'", markup=False, highlight=False)
        if apply:
            pending = wal.apply_settings(rt.settings.pg_target(), settings)
            if pending:
                rt.out.print(f"restart the server to apply: {', '.join(pending)}")
            else:
                rt.out.print("applied; no restart needed")
        rt.out.print(
            "note: the server's OS user must be able to write the repository folder",
            highlight=False,
        )


@pitr_cmd.command("base-backup")
@click.option("--json", "as_json", is_flag=True, help="print the base backup's record")
@shared_options
@click.pass_context
def base_backup_cmd(ctx: click.Context, as_json: bool) -> None:
    """Take a physical base backup into base/ in BACKUP_DIR (same as 'backup --physical')."""
    with runtime(ctx, as_json=as_json) as rt:
        run_base_backup(rt, as_json)


@pitr_cmd.command("check")
@shared_options
@click.pass_context
def check_cmd(ctx: click.Context) -> None:
    """Check the archived WAL chain from the newest base backup on is continuous (exit 6 if not)."""
    with runtime(ctx) as rt:
        base, report = pitr.check(LocalStorage(rt.settings.backup_dir))
        rt.out.print(
            f"base {base.name}: WAL {report.start} .. {report.newest or '-'}, "
            f"{report.segments} segments",
            highlight=False,
        )
        if report.missing:
            rt.out.print("missing: " + " ".join(report.missing), highlight=False)
    if not report.ok:
        ctx.exit(6)


@pitr_cmd.command("restore")
@pitr_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def restore_cmd(ctx: click.Context, pitr_request: PitrRequest, as_json: bool) -> None:
    """Restore a base backup and replay archived WAL to a point in time (same as
    'safehold restore --pitr')."""
    with runtime(ctx, as_json=as_json) as rt:
        run_restore(rt, pitr_request)
