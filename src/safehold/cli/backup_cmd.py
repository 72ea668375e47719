from __future__ import annotations

import click

from ..operations.backup import COMPRESSIONS, backup_database
from ..storage import LocalStorage
from .runtime import runtime, shared_options


@click.command()
@click.option(
    "--compress",
    type=click.Choice(COMPRESSIONS),
    default=None,
    help="gzip: pg_dump's own (db_backup_*.sql); zstd: multi-threaded, "
    "db_backup_*.sql.zst [backup.compress]",
)
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@shared_options
@click.pass_context
def backup(ctx: click.Context, compress: str | None, as_json: bool) -> None:
    """Back up the database into BACKUP_DIR as db_backup_YYYYMMDD_HHMMSS.sql (UTC).

    The file is written under a temporary name, fsynced and renamed, then its manifest
    (sha256, size, times, versions, rows per table) is written: only then is it a backup.
    """
    if compress is not None:
        ctx.ensure_object(dict)["backup.compress"] = compress
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        manifest = backup_database(
            rt.settings.pg_target(), storage, rt.settings.backup_options(), rt.sink
        )
        if as_json:
            rt.emit_json(manifest.to_json())
        else:
            click.echo(storage.path(manifest.artifact))
