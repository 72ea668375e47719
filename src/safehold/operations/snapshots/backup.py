"""Chunked backups: a database's dump stream, a folder or a Docker volume into the chunk store.

No repository lock is held: the store takes its own shared lock, so several hosts (and several
targets of one host) back up at once; a snapshot is committed only after its source said it
succeeded (pg_dump's exit status, the walk's end), so a failed or killed backup leaves at most
packs no snapshot names, which the next prune removes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from ...chunkstore import ChunkStore, SnapshotInfo
from ...chunkstore.trees import backup_stream, backup_tree
from ...errors import UsageError
from ...lock import folder_key, volume_key, volume_lock
from ...model import Event, EventSink, null_sink
from ...sources.postgres import DumpStream, PgTarget
from ...storage import LocalStorage
from .._pipeline import Progress
from ..database.backup import capture_globals
from ..volumes.docker import Access, volume_folder
from ..volumes.downtime import quiesced
from .targets import database_target, volume_target

DUMP_FORMAT = "pg_dump-custom-uncompressed"


class _DumpReader:
    """pg_dump's output as a reader. At its end pg_dump's exit status is checked (a failed dump
    raises before the snapshot commits) and ``meta`` gets the dump's facts."""

    def __init__(self, dump: DumpStream, progress: Progress, meta: dict[str, Any]) -> None:
        self._chunks = iter(dump)
        self._dump = dump
        self._progress = progress
        self._meta = meta
        self._left = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes, fewer only at the end: the chunker is handed whole reads (a pipe's
        short reads would otherwise move chunk boundaries from one day's dump to the next)."""
        parts: list[bytes] = []
        want = size if size >= 0 else 1 << 62
        while want > 0:
            if not self._left:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._end()
                    break
                self._left = memoryview(bytes(chunk))
            take = min(want, len(self._left))
            parts.append(bytes(self._left[:take]))
            self._left = self._left[take:]
            want -= take
        data = b"".join(parts)
        self._progress.advance(len(data))
        return data

    def _end(self) -> None:
        if "facts" not in self._meta:
            self._dump.finish()
            self._meta["facts"] = dict(self._dump.facts)
            self._progress.close()


def snapshot_database(
    target: PgTarget,
    store: ChunkStore,
    sink: EventSink = null_sink,
    *,
    group: dict[str, Any] | None = None,
) -> SnapshotInfo:
    """One snapshot of ``database:NAME``: pg_dump's uncompressed custom format (the store
    compresses each new chunk), its row counts, and the globals a new server needs."""
    captured = capture_globals(target)  # before pg_dump: a role dropped meanwhile is kept
    started = datetime.now(UTC)
    sink(Event("backup", f"backing up database {target.where()} into the chunk store"))
    meta: dict[str, Any] = {
        "format": DUMP_FORMAT,
        "globals": captured.to_json(),
        "started_at": started.isoformat(),
    }
    with DumpStream(target, compress_level=0) as dump:
        estimate = dump.facts.get("database_size")
        progress = Progress(sink, f"dump {target.dbname}", estimate)
        info = backup_stream(
            store,
            _DumpReader(dump, progress, meta),
            database_target(target.dbname),
            meta,
            group=group,
        )
    _done(sink, info)
    return info


def snapshot_folder(
    root: Path,
    name: str,
    store: ChunkStore,
    repo: LocalStorage,
    *,
    cache_dir: Path | None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> SnapshotInfo:
    """One snapshot of ``volume:NAME`` from the folder ``root`` (a bind mount, a volume's
    folder), under the folder's shared lock (a restore of it waits)."""
    repo.ensure()
    with volume_lock(
        repo.root,
        folder_key(root),
        exclusive=False,
        timeout=lock_timeout,
        purpose=f"safehold backup of {root}",
    ):
        return snapshot_tree(root, name, store, cache_dir, sink)


def snapshot_volume(
    client: docker.DockerClient,
    name: str,
    store: ChunkStore,
    repo: LocalStorage,
    *,
    cache_dir: Path | None,
    access: Access = "auto",
    lock_timeout: float = 300.0,
    stop_timeout: int | None = None,
    sink: EventSink = null_sink,
) -> SnapshotInfo:
    """One snapshot of ``volume:NAME``; the volume's hooks and labelled containers are handled
    as for a tar backup. The volume's folder must be readable here (direct access)."""
    root = readable_folder(client, name, access)
    repo.ensure()
    with (
        volume_lock(
            repo.root,
            volume_key(name),
            exclusive=False,
            timeout=lock_timeout,
            purpose=f"safehold backup of volume {name}",
        ),
        quiesced(client, [name], sink, f"backup of volume {name}", repo, stop_timeout=stop_timeout),
    ):
        return snapshot_tree(root, name, store, cache_dir, sink)


def readable_folder(client: docker.DockerClient, name: str, access: Access) -> Path:
    """The folder of Docker volume ``name``, which a chunked backup walks."""
    root = volume_folder(client, name, access)
    if root is None:
        raise UsageError(
            f"a chunked backup of volume {name} reads its folder, which is not readable here",
            hint="run safehold on the Docker host as root (backup.volume_access = 'direct'), "
            "or keep this volume in the tar format (backup.chunked_targets)",
        )
    return root


def snapshot_tree(
    root: Path,
    name: str,
    store: ChunkStore,
    cache_dir: Path | None,
    sink: EventSink,
    *,
    group: dict[str, Any] | None = None,
) -> SnapshotInfo:
    """One snapshot of ``volume:NAME`` from ``root``; the caller holds its lock (and has
    stopped what must not write meanwhile)."""
    sink(Event("backup", f"backing up {root} into the chunk store as {volume_target(name)}"))
    info = backup_tree(
        store, root, volume_target(name), cache_dir=cache_dir, events=sink, group=group
    )
    _done(sink, info)
    return info


def _done(sink: EventSink, info: SnapshotInfo) -> None:
    stats = info.stats
    sink(
        Event(
            "backup",
            f"snapshot {info.id} of {info.target}: {stats.get('files', 0)} files, "
            f"{stats.get('bytes', 0)} bytes, {stats.get('new_bytes', 0)} bytes new",
            "info",
            {"snapshot": info.id, "target": info.target, **stats},
        )
    )
