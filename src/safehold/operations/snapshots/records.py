"""Snapshots as the catalog's records, so ``list`` and ``status`` judge a chunked target as they
judge one kept in files: its newest good backup, its age against the RPO, how many there are.

A snapshot's record is read from its header (the backup host can), and is ``ok``: a snapshot
object exists only once everything it names was written (``verify`` checks that it still is).
Its size is the bytes it holds, not what it added to the store.
"""

from __future__ import annotations

from ...chunkstore import ChunkStore, SnapshotInfo
from ...errors import SafeholdError
from ...model import BackupRecord, Manifest
from .targets import TargetKind, split_target

COMPRESSION = "chunked"  # a record's compression: the chunk store's zstd per chunk


def snapshot_records(store: ChunkStore) -> list[BackupRecord]:
    """Every product snapshot as a ``BackupRecord`` (name: the snapshot id), oldest first."""
    records = []
    for info in store.snapshots():
        try:
            kind, target = split_target(info.target)
        except SafeholdError:
            continue  # written through the library under another name: not a product target
        records.append(
            BackupRecord(
                name=info.id,
                kind=kind,
                created=info.time,
                size=info.stats.get("bytes"),
                status="ok",
                manifest=_manifest(info, kind, target),
            )
        )
    return records


def _manifest(info: SnapshotInfo, kind: TargetKind, target: str) -> Manifest:
    return Manifest(
        artifact=info.id,
        kind=kind,
        target=target,
        compression=COMPRESSION,
        size=info.stats.get("bytes", 0),
        sha256="",
        started_at=info.time,
        finished_at=info.time,
        tool_version="",
        facts={**info.stats, "snapshot": info.id, "host": info.host},
    )
