"""``wal-push`` and ``wal-fetch``: PostgreSQL's archive_command and restore_command."""

from __future__ import annotations

from pathlib import Path

import click

from ..operations.pitr import ahead as wal_ahead
from ..operations.pitr import archive as wal
from .flags import shared_options
from .runtime import runtime
from .wal_places import wal_archive


@click.command("wal-push")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--ahead",
    type=click.IntRange(min=0),
    default=wal_ahead.AHEAD,
    show_default=True,
    help="also push up to N later segments the server has marked ready (or marks meanwhile), "
    "leaving a marker the archive_command takes instead of starting safehold again (0: off)",
)
@shared_options
@click.pass_context
def wal_push_cmd(ctx: click.Context, path: Path, ahead: int) -> None:
    """Archive one WAL segment (or .history/.backup file): archive_command = '... wal-push %p'.

    Stores it zstd-compressed (and encrypted when [encryption] is configured) under wal/ in
    BACKUP_DIR and in every location that takes automatic copies, each with its sha256, and
    exits 0 only once every copy is durable. Pushing a file the archive already holds is fine
    when the content is identical, and an error when it differs. The repository folder must be
    writable by the user the server runs as.

    It pushes ahead at the same time: segments after PATH that the server has marked ready
    (archive_status/*.ready), or marks while this runs, are pushed too, two at a time, each
    leaving a marker wal/.ahead/NAME that the archive_command of 'pitr setup' takes instead of
    starting safehold again for that segment.
    """
    with runtime(ctx) as rt:
        result, _marked = wal_ahead.push(wal_archive(rt), path, limit=ahead)
        if result.already:
            rt.sink_info(f"wal-push {result.name}: already archived (identical)")


@click.command("wal-fetch")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path, dir_okay=False))
@shared_options
@click.pass_context
def wal_fetch_cmd(ctx: click.Context, name: str, dest: Path) -> None:
    """Restore one archived WAL file: restore_command = '... wal-fetch %f %p'.

    Reads the repository's copy, else a location's (a missing or damaged copy falls back to the
    next), decrypts, decompresses and checks the sha256 before the file appears at DEST. A file
    the archive does not have exits 1 with a one-line note (the normal end of recovery); a
    damaged one exits 6.
    """
    with runtime(ctx) as rt:
        try:
            wal.fetch(wal_archive(rt, fetching=True), name, dest)
        except wal.WalMissing as exc:
            click.echo(f"wal-fetch: {exc.message}", err=True)
            missing = True
        else:
            missing = False
    if missing:
        ctx.exit(1)
