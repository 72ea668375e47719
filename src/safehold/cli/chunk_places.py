"""Where the chunk store is: its primary (BACKUP_DIR, or the location ``backup.chunk_location``
names, written straight to with no local staging) and its copies in the other locations.

A chunked backup is mirrored to the locations that take every backup (``copy_after_backup``)
right after it is made; ``snapshots copy`` does it on demand. Reading commands open the
primary, or, when it holds no store (a new host), the first location that does, and keep the
other places as mirrors: a pack missing or damaged in one is read from another.
"""

from __future__ import annotations

import dataclasses

from ..chunkstore import ChunkStore
from ..chunkstore.layout import CONFIG
from ..chunkstore.mirror import MirrorReport, mirror
from ..config.chunked import store_access, uses_chunks
from ..errors import StorageError
from ..model import Event
from ..operations.snapshots import open_store
from ..storage import LocalStorage
from ..storage.base import Storage
from .locations import automatic, locations
from .runtime import Runtime

Place = tuple[str, Storage]  # (name: "local" or the location's, its storage)
LOCAL = "local"


def places(rt: Runtime) -> list[Place]:
    """The primary first, then every other place that may hold a copy."""
    settings = rt.settings
    local: Place = (LOCAL, LocalStorage(settings.backup_dir))
    others: list[Place] = [(p.name, p.storage) for p in locations(settings)]
    name = settings.backup.chunk_location
    if not name:
        return [local, *others]
    (primary,) = [p for p in others if p[0] == name] or [_unknown(rt, name)]
    return [primary, *(p for p in others if p[0] != name), local]


def _unknown(rt: Runtime, name: str) -> Place:
    locations(rt.settings, [name])  # raises, naming the configured ones
    raise AssertionError  # pragma: no cover


def open_for_backup(rt: Runtime) -> ChunkStore:
    storage = places(rt)[0][1]
    access = store_access(rt.settings, backup=True, storage=storage)
    return open_store(dataclasses.replace(access, events=rt.sink), create=True)


def open_for_reading(rt: Runtime) -> ChunkStore:
    """The first place holding the store (said when it is not the primary); the others are
    its mirrors."""
    found = places(rt)
    chosen = next((p for p in found if p[1].exists(CONFIG)), found[0])
    if chosen is not found[0]:
        rt.sink_info(
            f"{found[0][1].description} holds no chunk store: reading it from {chosen[0]} "
            f"({chosen[1].description})"
        )
    access = store_access(rt.settings, storage=chosen[1])
    mirrors = tuple(p for p in found if p is not chosen)
    return open_store(dataclasses.replace(access, mirrors=mirrors, events=rt.sink))


def has_store(rt: Runtime) -> bool:
    """Whether chunked targets are configured and some place holds their store."""
    return uses_chunks(rt.settings) and any(s.exists(CONFIG) for _, s in places(rt))


def copy_store(rt: Runtime, store: ChunkStore, names: list[str]) -> list[tuple[str, MirrorReport]]:
    """Mirror ``store`` to the locations ``names`` (never onto itself)."""
    done = []
    for place in locations(rt.settings, names):
        if place.storage.description == store.storage.description:
            continue
        report = mirror(
            store.storage, place.storage, lock_ttl=store.lock_ttl, lock_wait=store.lock_wait
        )
        rt.sink(
            Event(
                "copy",
                f"chunk store copied to {place.name}: {len(report.snapshots)} snapshot(s), "
                f"{report.packs} pack(s), {report.bytes} bytes",
                "info",
                {"location": place.name, **dataclasses.asdict(report)},
            )
        )
        done.append((place.name, report))
    return done


def mirror_after_backup(rt: Runtime, store: ChunkStore) -> None:
    """The automatic copies of a chunked backup; a failure says the snapshot itself is good."""
    names = [p.name for p in automatic(locations(rt.settings))]
    if not names:
        return
    try:
        copy_store(rt, store, names)
    except StorageError as exc:
        exc.message = (
            f"the snapshot is written and good, but copying the store failed: {exc.message}"
        )
        raise
