from __future__ import annotations

from pathlib import Path

import click

from ..model import Manifest
from ..operations.backup import COMPRESSIONS, backup_database
from ..operations.engine import connect_docker
from ..operations.volume import backup_tree, backup_volume
from ..storage import LocalStorage
from .runtime import runtime, shared_options


@click.command()
@click.option(
    "--compress",
    type=click.Choice(COMPRESSIONS),
    default=None,
    help="gzip: db_backup_*.sql (pg_dump's own) / volume_*.tar.gz; zstd: multi-threaded, "
    "*.sql.zst / *.tar.zst [backup.compress]",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME",
    help="back up this Docker volume (repeatable) as volume_NAME_YYYYMMDD_HHMMSS.tar.gz",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="back up a plain folder (a bind mount), named after its last component (repeatable)",
)
@click.option(
    "--database/--no-database",
    default=None,
    help="include the database (default: yes, unless --volume or --path is given)",
)
@click.option("--json", "as_json", is_flag=True, help="print the manifest(s) as JSON")
@shared_options
@click.pass_context
def backup(
    ctx: click.Context,
    compress: str | None,
    volumes: tuple[str, ...],
    paths: tuple[Path, ...],
    database: bool | None,
    as_json: bool,
) -> None:
    """Back up the database (db_backup_YYYYMMDD_HHMMSS.sql, UTC) and/or Docker volumes.

    Each file is written under a temporary name, fsynced and renamed, then its manifest
    (sha256, size, times, versions, rows per table or file counts) is written: only then is it
    a backup. --json prints the manifest, or a list of them when volumes are included.
    """
    if compress is not None:
        ctx.ensure_object(dict)["backup.compress"] = compress
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        opts = rt.settings.backup_options()
        tree_compression = "zstd" if opts.compression == "zstd" else "gzip"
        done: list[Manifest] = []
        if database if database is not None else not (volumes or paths):
            done.append(backup_database(rt.settings.pg_target(), storage, opts, rt.sink))
        for folder in paths:
            done.append(
                backup_tree(
                    folder.resolve(),
                    folder.resolve().name,
                    storage,
                    compression=tree_compression,
                    lock_timeout=opts.lock_timeout,
                    sink=rt.sink,
                )
            )
        if volumes:
            client = connect_docker()
            for name in volumes:
                done.append(
                    backup_volume(
                        client,
                        name,
                        storage,
                        compression=tree_compression,
                        lock_timeout=opts.lock_timeout,
                        sink=rt.sink,
                    )
                )
        if as_json:
            only_db = len(done) == 1 and not (volumes or paths)
            rt.emit_json(done[0].to_json() if only_db else [m.to_json() for m in done])
        else:
            for manifest in done:
                click.echo(storage.path(manifest.artifact))
