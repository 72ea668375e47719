from __future__ import annotations

import os
import sys

import click

from ..operations.cat import cat_backup
from ..storage import LocalStorage
from .flags import shared_options
from .requests import CatRequest
from .runtime import runtime


class Stdout:
    """Standard output without a buffer: nothing is left to flush (and fail) at exit when the
    reader has gone, and every chunk reaches the pipe as it is written."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)


@click.command("cat")
@click.argument("name", metavar="NAME|latest")
@click.option(
    "--volume",
    metavar="VOLUME",
    help="a backup of this volume (latest: its newest good backup)",
)
@click.option(
    "--force-tty",
    is_flag=True,
    help="write to standard output even when it is a terminal",
)
@shared_options
@click.pass_context
def cat_cmd(ctx: click.Context, name: str, volume: str | None, force_tty: bool) -> None:
    """Write a backup's plain content to standard output, checked against its manifest.

    A database dump comes out as a pg_dump custom-format archive and a volume backup as an
    uncompressed tar, whatever the format stored (gzip, zstd, encrypted with age: decrypted
    with the configured identity or passphrase). NAME is a backup name, a fixed latest name
    (db_backup_latest.sql, volume_NAME_latest.tar.gz...) or latest: the newest good database
    dump, or with --volume the newest good backup of that volume. A safety copy or a globals
    artifact can be named too.

    The sha256 of the stored file is checked as it streams; the last MiB is held back until it
    matches, so a damaged backup never reaches its end and the command exits with status 6
    (use 'set -o pipefail' in scripts). When the reader stops early the rest is still read
    and checked.

    \b
    Examples:
      safehold cat latest | pg_restore --list
      safehold cat db_backup_20241201_120000.sql.zst.age > plain.dump
      safehold cat --volume user-data latest | tar -tv
      safehold cat latest | pg_restore --dbname=scratch --no-owner
    """
    CatRequest(name, volume, force_tty).check(sys.stdout.fileno())
    with runtime(ctx) as rt:
        result = cat_backup(
            LocalStorage(rt.settings.backup_dir),
            name,
            Stdout(sys.stdout.fileno()),
            volume=volume,
            key=rt.settings.decryption_key(),
            lock_timeout=rt.settings.lock_timeout,
            sink=rt.sink,
        )
        if result.reader_left:
            rt.sink_info(
                f"{result.artifact}: the reader stopped after part of the content; the whole "
                "backup was read and matches its manifest"
            )
