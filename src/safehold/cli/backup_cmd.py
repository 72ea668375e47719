from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import docker

from .. import catalog
from ..config import Settings
from ..errors import UsageError
from ..model import Manifest
from ..naming import COMPRESSIONS
from ..operations.database.backup import backup_database
from ..operations.pins import pin_all
from ..operations.snapshots import info_json
from ..operations.system.backup import backup_set
from ..operations.volumes.docker import backup_volume
from ..operations.volumes.folder import backup_tree
from ..sources.docker.engine import connect_docker, select_volumes
from ..storage import LocalStorage
from .chunked import ChunkedBackups, chunked_set
from .databases import backup_many, selected
from .flags import config_option, shared_options
from .locations import copy_after_backup
from .physical import run_base_backup
from .requests import parse_keep_until
from .runtime import Runtime, runtime


@dataclass(frozen=True)
class BackupRequest:
    """What ``safehold backup`` was asked; ``check`` refuses what does not go together, before
    anything runs (``--compress`` and ``--concurrency`` are config keys: the config path)."""

    full: bool
    volumes: tuple[str, ...]
    labels: tuple[str, ...]
    paths: tuple[Path, ...]
    physical: bool
    pin: bool
    keep_until: str | None

    def check(self) -> None:
        if self.pin and self.keep_until:
            raise UsageError("give --pin (for good) or --keep-until DATE, not both")
        if self.physical and (self.pin or self.keep_until):
            raise UsageError("--pin and --keep-until pin logical backups, not a base backup")
        if self.labels and not self.full:
            raise UsageError("--volume-label selects volumes for --all", hint="add --all")
        if self.physical and (self.full or self.volumes or self.paths or self.labels):
            raise UsageError("--physical backs up the whole cluster only", hint="run it on its own")
        self.until()

    def until(self) -> datetime | None:
        return parse_keep_until(self.keep_until) if self.keep_until else None


@click.command()
@config_option(
    "--compress",
    "backup.compress",
    type=click.Choice(COMPRESSIONS),
    help="gzip: db_backup_*.sql (pg_dump's own) / volume_*.tar.gz; zstd: multi-threaded, "
    "*.sql.zst / *.tar.zst",
)
@click.option(
    "--all",
    "full",
    is_flag=True,
    help="full-system backup: the database and every configured volume ([volumes] include, "
    "labels, exclude; plus --volume/--volume-label) as one set with one id",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME|PATTERN",
    help="back up this Docker volume (repeatable; a pattern such as 'user-*' takes every "
    "match) as volume_NAME_YYYYMMDD_HHMMSS.tar.gz",
)
@click.option(
    "--volume-label",
    "labels",
    multiple=True,
    metavar="KEY[=VALUE]",
    help="also every volume carrying this label (repeatable)",
)
@config_option(
    "--concurrency",
    "backup.concurrency",
    type=click.IntRange(min=1),
    help="members of an --all backup written at once",
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
@click.option(
    "--physical",
    is_flag=True,
    help="a physical base backup for point-in-time recovery (pg_basebackup; needs WAL "
    "archiving, see 'safehold pitr setup')",
)
@click.option(
    "--pin",
    "pin_it",
    is_flag=True,
    help="pin the new backup (every member of an --all set): prune never removes it",
)
@click.option(
    "--keep-until",
    metavar="DATE",
    help="pin it until DATE (YYYY-MM-DD: through that day, UTC; or an ISO 8601 time, UTC "
    "without a zone); after that prune's retention rules decide",
)
@click.option("--json", "as_json", is_flag=True, help="print the manifest(s) as JSON")
@shared_options
@click.pass_context
def backup(
    ctx: click.Context,
    compress: str | None,
    full: bool,
    volumes: tuple[str, ...],
    labels: tuple[str, ...],
    concurrency: int | None,
    paths: tuple[Path, ...],
    database: bool | None,
    physical: bool,
    pin_it: bool,
    keep_until: str | None,
    as_json: bool,
) -> None:
    """Back up the database (db_backup_YYYYMMDD_HHMMSS.sql, UTC) and/or Docker volumes.

    Each file is written under a temporary name, fsynced and renamed, then its manifest
    (sha256, size, times, versions, rows per table or file counts) is written: only then is it
    a backup. --json prints the manifest, or a list of them when volumes are included.

    --all writes a full-system set: every member shares the set's timestamp, a bounded pool
    writes them at once, containers labelled safehold.stop-during-backup=true are stopped once
    for all volumes, and the set record (.safehold/sets/ID.json) is written last, only when
    every member succeeded. --json then prints the set with its members' manifests.

    --physical streams a base backup (pg_basebackup, zstd, age when configured, sha256) into
    base/ and copies it to the locations; with archived WAL it is the start point of
    'restore --pitr'.

    --pin / --keep-until DATE pin what was just written (as 'safehold pin' does), e.g. the
    backup taken before maintenance: kept for good, or through DATE.
    """
    asked = BackupRequest(full, volumes, labels, paths, physical, pin_it, keep_until)
    asked.check()
    until = asked.until()
    with runtime(ctx, as_json=as_json) as rt:
        if physical:
            run_base_backup(rt, as_json)
            return
        storage = LocalStorage(rt.settings.backup_dir)
        pinning = (pin_it or until is not None, until)
        if full:
            _backup_all(rt, storage, volumes, labels, paths, database is not False, pinning)
            return
        opts = rt.settings.backup_options()
        vols = rt.settings.volume_options()
        done: list[Manifest] = []
        chunked = ChunkedBackups(rt, storage)
        if database if database is not None else not (volumes or paths):
            chosen = selected(rt)
            files = [d for d in chosen.databases if not chunked.wants("database", d)]
            for name in chosen.databases:
                if name not in files:
                    chunked.database(name)
            if rt.settings.many_databases and (len(files) > 1 or chosen.refused):
                done += backup_many(rt, storage, files, chosen.refused)
            elif files:
                target = rt.settings.pg_target(files[0])
                done.append(backup_database(target, storage, opts, rt.sink))
        for folder in paths:
            if chunked.wants("volume", folder.resolve().name):
                chunked.folder(folder.resolve())
                continue
            done.append(
                backup_tree(
                    folder.resolve(),
                    folder.resolve().name,
                    storage,
                    compression=vols.compression,
                    lock_timeout=opts.lock_timeout,
                    sink=rt.sink,
                    encryption=opts.encryption,
                )
            )
        if volumes:
            client = connect_docker()
            for name in select_volumes(client, volumes):
                if chunked.wants("volume", name):
                    chunked.volume(client, name)
                    continue
                done.append(
                    backup_volume(
                        client,
                        name,
                        storage,
                        compression=vols.compression,
                        lock_timeout=opts.lock_timeout,
                        sink=rt.sink,
                        access=vols.access,
                        encryption=opts.encryption,
                        stop_timeout=vols.stop_timeout,
                    )
                )
        _pin(rt, storage, [m.artifact for m in done], pinning)
        chunked.pin(*pinning)
        copy_after_backup(rt, storage, done)
        chunked.finish()
        if as_json:
            only_db = len(done) == 1 and not (volumes or paths or chunked.done)
            printed = [m.to_json() for m in done] + [info_json(s) for s in chunked.done]
            rt.emit_json(done[0].to_json() if only_db else printed)
        else:
            for manifest in done:
                click.echo(storage.path(manifest.artifact))
            for snap in chunked.done:
                click.echo(f"snapshot {snap.id} {snap.target}")


def _backup_all(
    rt: Runtime,
    storage: LocalStorage,
    volumes: tuple[str, ...],
    labels: tuple[str, ...],
    paths: tuple[Path, ...],
    with_database: bool,
    pinning: tuple[bool, datetime | None],
) -> None:
    settings: Settings = rt.settings
    chosen = settings.volumes
    include = (*chosen.include, *volumes)
    labels = (*chosen.labels, *labels)
    client: docker.DockerClient | None = None
    names: list[str] = []
    if include or labels:
        client = connect_docker()
        names = select_volumes(client, include, labels, chosen.exclude)
        if not names:
            rt.sink_warning(f"no Docker volume matches {', '.join((*include, *labels))}")
    folders = {p.resolve().name: p.resolve() for p in paths}
    if chunked_set(rt, storage, with_database, client, names, folders, pinning):
        return
    dbs = selected(rt) if with_database else None
    result = backup_set(
        storage,
        database=None,
        databases=[settings.pg_target(d) for d in dbs.databases] if dbs else [],
        refused=dbs.refused if dbs else None,
        client=client,
        volumes=names,
        folders=folders,
        options=settings.set_options(),
        sink=rt.sink,
    )
    _pin(rt, storage, list(result.members), pinning)
    manifests = [catalog.read_manifest(storage, name) for name in result.members]
    copy_after_backup(rt, storage, [m for m in manifests if m is not None])
    if rt.as_json:
        rt.emit_json(
            {**result.to_json(), "manifests": [m.to_json() for m in manifests if m is not None]}
        )
        return
    click.echo(f"set {result.id}")
    for name in result.members:
        click.echo(storage.path(name))


def _pin(
    rt: Runtime, storage: LocalStorage, names: list[str], pinning: tuple[bool, datetime | None]
) -> None:
    wanted, until = pinning
    if wanted and names:
        note = "backup --keep-until" if until else "backup --pin"
        timeout = rt.settings.lock_timeout
        pin_all(storage, names, note=note, until=until, lock_timeout=timeout, sink=rt.sink)
