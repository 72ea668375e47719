"""``safehold pitr``: archiving setup, base backups, chain check, restore to a point in time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from ..errors import UsageError
from ..operations import pitr, wal
from ..sandbox.cluster import free_port, server_bin_dir
from ..storage import LocalStorage
from .runtime import runtime, shared_options

COMMAND_HELP = "how the server should run safehold (default: this installation's safehold)"


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
        settings = wal.server_settings(command or wal.which_safehold(), rt.settings.backup_dir)
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
@shared_options
@click.pass_context
def base_backup_cmd(ctx: click.Context) -> None:
    """Take a physical base backup (pg_basebackup, tar, zstd) into base/ in BACKUP_DIR."""
    with runtime(ctx) as rt:
        record = pitr.base_backup(
            rt.settings.pg_target(), LocalStorage(rt.settings.backup_dir), rt.sink
        )
        rt.out.print(f"{record.name}: WAL from {record.start_segment}, {record.size} bytes")


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
@click.option("--to-time", help="recover up to this time (ISO 8601; UTC when no zone is given)")
@click.option("--latest", is_flag=True, help="recover to the end of the archive")
@click.option(
    "--target-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="new, empty folder for the restored cluster",
)
@click.option("--port", type=int, help="port for the restored server (default: a free one)")
@click.option("--server-user", help="OS user to run the server as (root only; default postgres)")
@click.option("--keep-running", is_flag=True, help="leave the restored server running")
@click.option("--command", "command", help=COMMAND_HELP)
@shared_options
@click.pass_context
def restore_cmd(
    ctx: click.Context,
    to_time: str | None,
    latest: bool,
    target_dir: Path,
    port: int | None,
    server_user: str | None,
    keep_running: bool,
    command: str | None,
) -> None:
    """Restore a base backup into a new folder and replay archived WAL to a point in time."""
    if latest == (to_time is not None):
        raise UsageError("give exactly one of --to-time TS or --latest")
    when = None
    if to_time is not None:
        try:
            when = datetime.fromisoformat(to_time)
        except ValueError as exc:
            raise UsageError(f"--to-time {to_time!r} is not an ISO 8601 time") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    with runtime(ctx) as rt:
        result = pitr.restore(
            LocalStorage(rt.settings.backup_dir),
            target_dir,
            to_time=when,
            command=command or wal.which_safehold(),
            bin_dir=server_bin_dir(),
            run_as=server_user or pitr.default_server_user(),
            port=port or free_port(),
            user=rt.settings.database.user,
            keep_running=keep_running,
            sink=rt.sink,
        )
        state = f"running on port {result.port}" if result.running else "stopped"
        rt.out.print(
            f"restored {result.base} into {result.target_dir}: {result.reached}; "
            f"lsn {result.lsn}; {result.took_s:.1f}s; server {state}",
            highlight=False,
        )
