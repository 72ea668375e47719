"""Full-system sets of snapshots: ``backup --all`` when the targets are chunked.

Every member is a snapshot whose header names the set (``SnapshotInfo.group``: the set id, how
many members it has, this one's role), so a set needs no object of its own and travels with
the store to every location: it is whole once that many members exist. The volumes are taken
in one quiet period (labelled containers stopped once for all of them), the database before
it, from its own consistent snapshot. ``restore --all`` and the drills use a set after
``materialize_set`` exported its members as the seed's files and wrote the set record the
file sets have, so the whole-system runbook runs unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from ... import catalog, naming
from ..._version import __version__
from ...chunkstore import ChunkStore, SnapshotInfo
from ...crypto import EncryptionKey
from ...errors import IntegrityError, UsageError
from ...lock import folder_key, volume_key, volume_lock
from ...model import BackupSet, Event, EventSink, null_sink
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from ..volumes.docker import Access
from ..volumes.downtime import quiesced
from .backup import readable_folder, snapshot_database, snapshot_tree
from .materialize import materialize
from .targets import split_target


@dataclass(frozen=True)
class SnapshotSet:
    id: str
    size: int  # members it was taken with
    members: tuple[SnapshotInfo, ...]

    @property
    def complete(self) -> bool:
        return len(self.members) == self.size

    @property
    def started_at(self) -> datetime:
        return min(m.time for m in self.members)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "complete": self.complete,
            "members": [m.id for m in self.members],
            "expected": self.size,
            "started_at": self.started_at.isoformat(),
        }


def snapshot_sets(store: ChunkStore) -> list[SnapshotSet]:
    """Every set the store's snapshots name, oldest first (incomplete ones too)."""
    found: dict[str, list[SnapshotInfo]] = {}
    sizes: dict[str, int] = {}
    for info in store.snapshots():
        if info.group is not None:
            found.setdefault(info.group["id"], []).append(info)
            sizes[info.group["id"]] = int(info.group["members"])
    return [SnapshotSet(k, sizes[k], tuple(found[k])) for k in sorted(found)]


def snapshot_set(
    store: ChunkStore,
    repo: LocalStorage,
    *,
    database: PgTarget | None,
    client: docker.DockerClient | None,
    volumes: list[str],
    folders: dict[str, Path],
    cache_dir: Path | None,
    access: Access = "auto",
    lock_timeout: float = 300.0,
    stop_timeout: int | None = None,
    sink: EventSink = null_sink,
) -> SnapshotSet:
    """Snapshot ``database``, Docker ``volumes`` and ``folders`` as one set."""
    if database is None and not volumes and not folders:
        raise UsageError(
            "the full-system backup has nothing to back up",
            hint="configure [volumes] include / labels, or pass --volume NAME|PATTERN",
        )
    if volumes and client is None:
        raise UsageError("backing up Docker volumes needs the Docker engine")
    roots = {name: readable_folder(client, name, access) for name in volumes} if client else {}
    set_id = _fresh_id(store, repo)
    size = (database is not None) + len(volumes) + len(folders)
    sink(Event("backup", f"full-system backup {set_id} into the chunk store: {size} members"))

    def group(role: str, root: Path | None = None) -> dict[str, Any]:
        where = {"source": str(root)} if role == "folder" and root is not None else {}
        return {"id": set_id, "members": size, "role": role, **where}

    taken: list[SnapshotInfo] = []
    if database is not None:
        taken.append(snapshot_database(database, store, sink, group=group("database")))
    repo.ensure()
    with quiesced(
        client, volumes, sink, f"full-system backup {set_id}", repo, stop_timeout=stop_timeout
    ):
        for name, root, role in [
            *((n, roots[n], "volume") for n in volumes),
            *((n, p, "folder") for n, p in sorted(folders.items())),
        ]:
            key = volume_key(name) if role == "volume" else folder_key(root)
            with volume_lock(
                repo.root, key, exclusive=False, timeout=lock_timeout, purpose="safehold backup"
            ):
                taken.append(
                    snapshot_tree(root, name, store, cache_dir, sink, group=group(role, root))
                )
    sink(Event("backup", f"full-system backup {set_id} done: {size} snapshots", "info"))
    return SnapshotSet(set_id, size, tuple(taken))


def _fresh_id(store: ChunkStore, repo: LocalStorage) -> str:
    """A set id (the seed's stamp) no file set and no snapshot set has."""
    while True:
        moment = datetime.now(UTC)
        set_id = naming.stamp(moment)
        used = {s.id for s in catalog.read_sets(repo)} | {s.id for s in snapshot_sets(store)}
        if set_id not in used:
            return set_id
        time.sleep(1.0 - moment.microsecond / 1e6)


def materialize_set(
    store: ChunkStore,
    set_id: str,
    repo: LocalStorage,
    *,
    encryption: EncryptionKey | None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> BackupSet:
    """The set's members exported as the seed's files and its record written in ``repo``
    (as a file set's): what ``restore --all`` and the drills read."""
    chosen = next((s for s in snapshot_sets(store) if s.id == set_id), None)
    if chosen is None:
        raise UsageError(f"no snapshot set {set_id!r} in the chunk store")
    if not chosen.complete:
        raise IntegrityError(
            f"snapshot set {set_id} is incomplete: {len(chosen.members)} of {chosen.size} "
            "members exist",
            hint="pick another set; a backup that failed half-way leaves its members as "
            "single snapshots",
        )
    names: list[str] = []
    database, volumes, folders = None, [], []
    for info in sorted(chosen.members, key=lambda m: m.target):
        manifest = materialize(
            store, info.id, repo, encryption=encryption, lock_timeout=lock_timeout, sink=sink
        )
        names += [manifest.artifact, *catalog.companions(manifest)]
        kind, target = split_target(info.target)
        role = info.group["role"] if info.group else kind
        if kind == "database":
            database = target
        else:
            volumes.append(target)
            if role == "folder":
                folders.append(target)
    record = BackupSet(
        id=set_id,
        started_at=chosen.started_at,
        finished_at=max(m.time for m in chosen.members),
        members=tuple(names),
        database=database,
        volumes=tuple(sorted(volumes)),
        tool_version=__version__,
        folders=tuple(sorted(folders)),
    )
    catalog.write_set(repo, record)
    return record
