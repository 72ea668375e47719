"""The commands' side of ``format = "chunked"``: which targets go to the chunk store, opening
it with this host's keys, and snapshot references (an id, or ``latest``) in restores."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import docker

from ..chunkstore import ChunkStore, SnapshotInfo
from ..chunkstore.layout import is_snapshot_id
from ..config.chunked import is_chunked, uses_chunks
from ..errors import UsageError
from ..model import BackupRecord
from ..naming import CHUNKS_CACHE
from ..operations.checks.drill import DrillRecord
from ..operations.snapshots import (
    database_target,
    materialize,
    snapshot_database,
    snapshot_folder,
    snapshot_records,
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

    def database(self) -> None:
        rt = self._rt
        self.done.append(snapshot_database(rt.settings.pg_target(), self.store, rt.sink))

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
    store = open_for_reading(rt)
    if store.decryption is None:
        raise UsageError(
            f"restoring snapshot {snapshot_id} needs the age identity",
            hint="set encryption.identity_file: the backup host's key opens no pack",
        )
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


def refuse_chunked_set(rt: Runtime) -> None:
    """A full-system set is made of seed files (its record names them); chunked targets are
    backed up one by one until sets can name snapshots."""
    if uses_chunks(rt.settings):
        raise UsageError(
            "backup --all writes a set of seed files; this repository keeps targets chunked",
            hint="back up chunked targets with 'safehold backup' (--volume/--path), or set "
            'backup.format = "files" for full-system sets',
        )


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
