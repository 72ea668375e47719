"""The commands' side of ``format = "chunked"``: which targets go to the chunk store, opening
it with this host's keys, and snapshot references (an id, or ``latest``) in restores."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import click
import docker

from .. import catalog
from ..chunkstore import ChunkStore, SnapshotInfo
from ..chunkstore.layout import is_snapshot_id
from ..config.chunked import is_chunked
from ..errors import UsageError
from ..model import BackupRecord
from ..naming import CHUNKS_CACHE
from ..operations.checks.drill import DrillRecord
from ..operations.snapshots import (
    database_target,
    info_json,
    materialize,
    materialize_set,
    snapshot_database,
    snapshot_folder,
    snapshot_records,
    snapshot_set,
    snapshot_sets,
    snapshot_volume,
    split_target,
    volume_target,
)
from ..storage import LocalStorage
from .chunk_places import has_store, mirror_after_backup, open_for_backup, open_for_reading
from .runtime import Runtime


class ChunkedBackups:
    """The chunked members of one ``safehold backup`` run; the store is opened once, when the
    first of them is reached."""

    def __init__(self, rt: Runtime, storage: LocalStorage) -> None:
        self._rt = rt
        self._storage = storage
        self._store: ChunkStore | None = None
        self.done: list[SnapshotInfo] = []

    def wants(self, kind: Literal["database", "volume"], name: str) -> bool:
        return is_chunked(self._rt.settings, kind, name)

    @property
    def store(self) -> ChunkStore:
        if self._store is None:
            self._store = open_for_backup(self._rt)
        return self._store

    def database(self, name: str | None = None) -> None:
        """A snapshot of database ``name`` (default: the configured one), ``database:NAME``."""
        rt = self._rt
        self.done.append(snapshot_database(rt.settings.pg_target(name), self.store, rt.sink))

    def folder(self, root: Path) -> None:
        rt = self._rt
        self.done.append(
            snapshot_folder(
                root,
                root.name,
                self.store,
                self._storage,
                cache_dir=self._cache,
                lock_timeout=rt.settings.lock_timeout,
                sink=rt.sink,
            )
        )

    def volume(self, client: docker.DockerClient, name: str) -> None:
        rt = self._rt
        vols = rt.settings.volume_options()
        self.done.append(
            snapshot_volume(
                client,
                name,
                self.store,
                self._storage,
                cache_dir=self._cache,
                access=vols.access,
                lock_timeout=rt.settings.lock_timeout,
                stop_timeout=vols.stop_timeout,
                sink=rt.sink,
            )
        )

    def pin(self, wanted: bool, until: datetime | None) -> None:
        """``backup --pin`` / ``--keep-until``: the snapshots this run made."""
        if wanted:
            note = "backup --keep-until" if until else "backup --pin"
            for info in self.done:
                self.store.pin(info.id, until, note)

    def finish(self) -> None:
        """The automatic copies of what this run stored."""
        if self.done:
            mirror_after_backup(self._rt, self.store)

    @property
    def _cache(self) -> Path:
        return self._rt.settings.backup_dir / CHUNKS_CACHE


def pending_snapshot(
    rt: Runtime, storage: LocalStorage, ref: str, kind: Literal["database", "volume"], name: str
) -> str | None:
    """The snapshot ``ref`` means (an id, or ``latest`` when the target's newest backup is a
    snapshot), without exporting anything; None when it means a file."""
    if is_snapshot_id(ref):
        return ref
    if ref == "latest" and is_chunked(rt.settings, kind, name) and has_store(rt):
        return _newest(rt, storage, kind, name)
    return None


def snapshot_ref(
    rt: Runtime, storage: LocalStorage, ref: str, kind: Literal["database", "volume"], name: str
) -> str:
    """``ref`` as the restore takes it: a snapshot id (or ``latest`` when the newest backup of
    the target is a snapshot) is exported as the seed's files first, and their name returned."""
    snapshot_id = pending_snapshot(rt, storage, ref, kind, name)
    if snapshot_id is None:
        return ref
    store = _with_identity(rt, f"restoring snapshot {snapshot_id}")
    info = store.snapshot(snapshot_id)
    wanted = database_target(name) if kind == "database" else volume_target(name)
    if info.target != wanted and not (kind == "database" and info.target.startswith("database:")):
        raise UsageError(
            f"snapshot {snapshot_id} is of {info.target}, not {wanted}",
            hint="'safehold snapshots list' shows each snapshot's target",
        )
    manifest = materialize(
        store,
        snapshot_id,
        storage,
        encryption=rt.settings.encryption_key(),
        lock_timeout=rt.settings.lock_timeout,
        sink=rt.sink,
    )
    return manifest.artifact


def _with_identity(rt: Runtime, doing: str) -> ChunkStore:
    """The store opened for reading data back: refused up front without the identity."""
    store = open_for_reading(rt)
    if store.decryption is None:
        raise UsageError(
            f"{doing} needs the age identity",
            hint="set encryption.identity_file: the backup host's key opens no pack",
        )
    return store


def _newest(
    rt: Runtime, storage: LocalStorage, kind: Literal["database", "volume"], name: str
) -> str | None:
    """The newest snapshot of the target when it is newer than the newest file backup."""
    from .. import catalog

    store = open_for_reading(rt)
    target = database_target(name) if kind == "database" else volume_target(name)
    snaps = store.snapshots(target)
    if not snaps:
        return None
    newest = catalog.latest(catalog.scan(storage), kind, name)
    if newest is not None and newest.created >= snaps[-1].time:
        return None
    return snaps[-1].id


def chunked_set(
    rt: Runtime,
    storage: LocalStorage,
    with_database: bool,
    client: docker.DockerClient | None,
    volumes: list[str],
    folders: dict[str, Path],
    pinning: tuple[bool, datetime | None],
) -> bool:
    """``backup --all`` of chunked targets: a set of snapshots (True); False when the targets
    are files (the file set is made instead). A set is one format: a mix is refused."""
    settings = rt.settings
    members = [("volume", n) for n in [*volumes, *folders]]
    if with_database:
        members.append(("database", settings.database_name()))
    chunked = [is_chunked(settings, kind, name) for kind, name in members]  # type: ignore[arg-type]
    if not any(chunked):
        return False
    if not all(chunked):
        files = [name for (_, name), c in zip(members, chunked, strict=True) if not c]
        raise UsageError(
            f"a full-system set is one format, but {', '.join(files)} would be files and the "
            "rest chunked",
            hint='set backup.format = "chunked" for all of them, or list every set member in '
            "backup.chunked_targets (or none)",
        )
    if with_database and settings.many_databases and not settings.database_chosen:
        raise UsageError(
            "a chunked full-system set holds one database; database.names configures several",
            hint="back the databases up with 'safehold backup' (one snapshot each) and the "
            "volumes with 'backup --all --no-database', or use the files format for the set",
        )
    backups = ChunkedBackups(rt, storage)
    made = snapshot_set(
        backups.store,
        storage,
        database=settings.pg_target() if with_database else None,
        client=client,
        volumes=volumes,
        folders=folders,
        cache_dir=settings.backup_dir / CHUNKS_CACHE,
        access=settings.volume_options().access,
        lock_timeout=settings.lock_timeout,
        stop_timeout=settings.volume_options().stop_timeout,
        sink=rt.sink,
    )
    backups.done.extend(made.members)
    backups.pin(*pinning)
    backups.finish()
    if rt.as_json:
        rt.emit_json({**made.to_json(), "snapshots": [info_json(m) for m in made.members]})
    else:
        click.echo(f"set {made.id}")
        for info in made.members:
            click.echo(f"snapshot {info.id} {info.target}")
    return True


def pending_set(
    rt: Runtime, storage: LocalStorage, set_ref: str | None, moment: datetime | None
) -> str | None:
    """The snapshot set ``restore --all`` means (by id, or the newest complete one when it is
    newer than the newest file set), without exporting anything; None: a file set."""
    if not has_store(rt):
        return None
    sets = [s for s in snapshot_sets(open_for_reading(rt)) if s.complete]
    if set_ref not in (None, "latest"):
        return set_ref if any(s.id == set_ref for s in sets) else None
    if moment is not None:
        sets = [s for s in sets if s.started_at <= moment]
    if not sets:
        return None
    files = [s for s in catalog.read_sets(storage) if moment is None or s.started_at <= moment]
    if files and files[-1].started_at >= sets[-1].started_at:
        return None
    return sets[-1].id


def set_ref_of(
    rt: Runtime, storage: LocalStorage, set_ref: str | None, moment: datetime | None
) -> tuple[str | None, datetime | None]:
    """``restore --all`` / ``drill --full-system``: a snapshot set exported with its record
    first (then its id names it as a file set's would); other references as they were."""
    chosen = pending_set(rt, storage, set_ref, moment)
    if chosen is None:
        return set_ref, moment
    store = _with_identity(rt, f"restoring snapshot set {chosen}")
    materialize_set(
        store,
        chosen,
        storage,
        encryption=rt.settings.encryption_key(),
        lock_timeout=rt.settings.lock_timeout,
        sink=rt.sink,
    )
    return chosen, None


def chunked_records(rt: Runtime) -> list[BackupRecord]:
    """The store's snapshots as catalog records (none when there is no store)."""
    return snapshot_records(open_for_reading(rt)) if has_store(rt) else []


def drill_snapshots(rt: Runtime, storage: LocalStorage, name: str | None) -> dict[str, float]:
    """Before a drill of ``name`` (a snapshot id) or of every target's newest backup (None):
    the snapshots it covers exported as the seed's files. Artifact -> seconds the export took,
    which belong to the measured recovery time."""
    if name is not None and not is_snapshot_id(name):
        return {}
    if name is None and not has_store(rt):
        return {}
    store = open_for_reading(rt)
    if name is not None:
        wanted = [store.snapshot(name)]
    else:
        newest = {info.target: info for info in store.snapshots()}
        wanted = []
        for info in newest.values():
            product = _product(info.target)
            if product is not None and _newest(rt, storage, *product) == info.id:
                wanted.append(info)
    spent: dict[str, float] = {}
    for info in wanted:
        started = time.monotonic()
        kind, target = split_target(info.target)
        artifact = snapshot_ref(rt, storage, info.id, kind, target)
        spent[artifact] = time.monotonic() - started
    return spent


def _product(target: str) -> tuple[Literal["database", "volume"], str] | None:
    try:
        return split_target(target)
    except UsageError:
        return None


def with_exports(record: DrillRecord, spent: dict[str, float]) -> DrillRecord:
    """The drill's record with each export's time added to its member and to the total."""
    if not spent:
        return record
    members = []
    for member in record.members:
        extra = spent.get(str(member.get("artifact")), 0.0)
        members.append(
            {
                **member,
                "seconds": float(member.get("seconds", 0.0)) + extra,
                "export_s": round(extra, 3),
            }
            if extra
            else member
        )
    return dataclasses.replace(
        record, members=members, recovery_s=record.recovery_s + sum(spent.values())
    )
