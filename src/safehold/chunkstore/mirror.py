"""``mirror``: make another storage hold a copy of this store, object for object.

Every object keeps its name and bytes (packs stay encrypted, nothing is opened), so a copy
needs no key at all and a mirror can stand in for any pack of the original (``reader``'s
fallback). Only what the destination lacks is sent; nothing there is overwritten or deleted
(each side prunes by itself).

Consistency comes from order. The source is listed in the reverse of its commit order --
snapshots, then index objects, then packs -- while a shared lock keeps the source's prune
away, so every snapshot listed finds its index objects and packs in the later listings. The
destination gets them in commit order (packs, index, snapshots) under its own shared lock, so
a snapshot appears there only once everything it names is there: a killed copy leaves at
most packs that the next copy (or a prune) takes care of.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from ..errors import IntegrityError
from ..storage.base import Storage
from .index import list_index_names
from .inventory import stored_packs
from .layout import CONFIG, ID_KEY, index_key, pack_key, snapshot_key
from .locks import DEFAULT_TTL, StoreLock
from .pins import pin_keys
from .snapshots import list_snapshot_ids

COPIERS = 8  # objects copied at once (network bound)


@dataclass
class MirrorReport:
    snapshots: list[str] = field(default_factory=list)  # copied
    index_objects: int = 0
    packs: int = 0
    bytes: int = 0
    already: int = 0  # snapshots the destination held


def mirror(
    source: Storage,
    dest: Storage,
    *,
    lock_ttl: timedelta = DEFAULT_TTL,
    lock_wait: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> MirrorReport:
    """Copy to ``dest`` every object of the store in ``source`` that it lacks."""
    report = MirrorReport()
    with (
        StoreLock(source, "shared", lock_ttl, lock_wait),
        StoreLock(dest, "shared", lock_ttl, lock_wait),
    ):
        _same_store(source, dest)
        snapshots = list_snapshot_ids(source)
        indexes = list_index_names(source)
        packs = stored_packs(source)
        pins = pin_keys(source)
        have_snapshots = set(list_snapshot_ids(dest))
        have_indexes = set(list_index_names(dest))
        have_packs = stored_packs(dest)
        report.already = len(set(snapshots) & have_snapshots)
        wanted = [pack_key(name) for name in sorted(packs - have_packs)]
        report.packs = len(wanted)
        report.bytes += _copy_all(source, dest, wanted, progress)
        wanted = [index_key(name) for name in indexes if name not in have_indexes]
        report.index_objects = len(wanted)
        report.bytes += _copy_all(source, dest, wanted, progress)
        report.snapshots = [s for s in snapshots if s not in have_snapshots]
        report.bytes += _copy_all(source, dest, [snapshot_key(s) for s in report.snapshots], None)
        have_pins = set(pin_keys(dest))
        report.bytes += _copy_all(source, dest, [k for k in pins if k not in have_pins], None)
    return report


def _same_store(source: Storage, dest: Storage) -> None:
    """A destination without a store gets the source's id key and config (config last: a
    store with a config is complete); one with another store is refused."""
    config = source.read_bytes(CONFIG)
    if dest.exists(CONFIG):
        if dest.read_bytes(CONFIG) != config:
            raise IntegrityError(
                f"{dest.description} holds another chunk store than {source.description}",
                hint="copy into an empty location (or prefix); stores are never merged",
            )
        return
    dest.put_bytes(ID_KEY, source.read_bytes(ID_KEY))
    dest.put_bytes(CONFIG, config)


def _copy_all(
    source: Storage, dest: Storage, keys: list[str], progress: Callable[[int], None] | None
) -> int:
    def one(key: str) -> int:
        data = source.read_bytes(key)
        dest.put_bytes(key, data)
        if progress is not None:
            progress(len(data))
        return len(data)

    if not keys:
        return 0
    with ThreadPoolExecutor(COPIERS, thread_name_prefix="safehold-mirror") as pool:
        return sum(pool.map(one, keys))
