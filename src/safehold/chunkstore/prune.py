"""Prune: remove the data no snapshot needs, under the exclusive lock.

Planned from what is stored, never from a cache: every snapshot header's refs are the live
blobs; every pack in storage is classified against the (non-superseded) index objects:

- a pack younger than ``grace`` is kept as it is (a writer may still be on its way);
- an old pack with no live blob, or in no index at all (a killed writer's), is deleted;
- an old pack whose live share is below ``repack_below`` is repacked: its live blobs are
  copied into new packs (needs the identity; without it the pack is kept and a note says so).

Then, in this order: new packs committed -> one new index object listing every pack kept and
naming every index object it replaces (``supersedes``) -> the old index objects deleted ->
the packs deleted. A prune killed at any point leaves a store every snapshot can be restored
from, and the next prune finishes the job. A delete the storage refuses (Object Lock
retention) is reported and left for a later run, never a failure.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from ..errors import IntegrityError, StorageError, UsageError
from .index import load_index, write_index
from .inventory import remove_partials, stored_packs
from .layout import index_key, pack_key
from .locks import StoreLock
from .objtime import object_age
from .packs import Entry, PackDone
from .reader import blobs_by_pack
from .snapshots import ref_of
from .uploader import PackUploader

if TYPE_CHECKING:
    from .store import ChunkStore

READERS = 8


@dataclass
class PruneReport:
    snapshots: int = 0
    packs: int = 0  # packs in storage before
    removed_packs: list[str] = field(default_factory=list)
    repacked_packs: list[str] = field(default_factory=list)
    new_packs: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)  # unneeded but within the grace period
    refused: list[str] = field(default_factory=list)  # keys the storage would not delete
    removed_indexes: list[str] = field(default_factory=list)
    removed_locks: list[str] = field(default_factory=list)
    removed_partials: list[str] = field(default_factory=list)
    bytes_removed: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    live: set[bytes]
    index_names: list[str]
    packs: dict[str, list[Entry]]  # indexed and stored
    stored: set[str]
    keep: dict[str, list[Entry]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    repack: dict[str, list[Entry]] = field(default_factory=dict)  # pack -> live blobs to copy


def prune(
    store: ChunkStore, *, repack_below: float, grace: timedelta, lock: StoreLock
) -> PruneReport:
    report = PruneReport()
    plan = _survey(store, report)
    _classify(store, plan, report, repack_below, grace)
    lock.check()
    done = _repack(store, plan)
    report.new_packs = [p.name for p in done]
    changed = plan.delete or plan.repack or len(plan.index_names) > 1
    if changed:
        lock.check()
        packs = dict(plan.keep)
        packs.update({p.name: p.entries for p in done})
        write_index(store.storage, store.host_key.meta_key, packs, plan.index_names)
        for name in plan.index_names:
            _delete(store, index_key(name), report, report.removed_indexes, name)
        for name in plan.delete + list(plan.repack):
            size = _size(store, pack_key(name))
            if _delete(store, pack_key(name), report, report.removed_packs, name):
                report.bytes_removed += size
    report.repacked_packs = list(plan.repack)
    report.removed_partials = remove_partials(store.storage, grace)
    return report


def _survey(store: ChunkStore, report: PruneReport) -> _Plan:
    headers = store.headers
    ids = headers.ids()
    report.snapshots = len(ids)
    live: set[bytes] = set()
    with ThreadPoolExecutor(READERS, thread_name_prefix="safehold-prune") as pool:
        for refs in pool.map(lambda i: _refs(store, i), ids):
            live.update(refs)
    # Read afresh (no cache): prune decides from what the bucket holds now.
    index = load_index(store.storage, store.host_key.meta_key)
    stored = stored_packs(store.storage)
    report.packs = len(stored)
    packs = {pack: entries for pack, entries in index.packs.items() if pack in stored}
    return _Plan(live, sorted(index.names), packs, stored)


def _refs(store: ChunkStore, snapshot_id: str) -> list[bytes]:
    try:
        return store.headers.refs(snapshot_id)
    except UsageError:
        return []  # forgotten since the listing (forget takes no lock): its blobs are not live


def _classify(
    store: ChunkStore, plan: _Plan, report: PruneReport, repack_below: float, grace: timedelta
) -> None:
    covered = _cover(plan)
    missing = plan.live - {ref_of(e[0]) for entries in covered.values() for e in entries}
    if missing:
        raise IntegrityError(
            f"{len(missing)} blob(s) that snapshots need are in no stored pack; prune stopped "
            "before deleting anything",
            hint="run verify to see which snapshots are damaged, and forget them",
        )

    def old(name: str) -> bool:
        try:
            age = object_age(store.storage, pack_key(name))
        except FileNotFoundError:
            return False
        # Without a storage clock only an explicit grace of zero lets a pack go.
        return age >= grace if age is not None else grace <= timedelta(0)

    can_repack = store.decryption is not None
    for name in sorted(plan.stored - set(plan.packs)):
        (plan.delete if old(name) else report.kept_young).append(name)
    for name, entries in plan.packs.items():
        mine = covered.get(name, [])
        share = sum(e[3] for e in mine) / (sum(e[3] for e in entries) or 1)
        if mine and share >= repack_below:
            plan.keep[name] = entries
        elif not old(name):
            plan.keep[name] = entries
            report.kept_young.append(name)
        elif not mine:
            plan.delete.append(name)
        elif can_repack:
            plan.repack[name] = mine
        else:
            plan.keep[name] = entries
            report.notes.append(f"pack {name} is {share:.0%} live; repacking needs the identity")


def _cover(plan: _Plan) -> dict[str, list[Entry]]:
    """Which live blobs each pack is the copy of: the livelier pack wins a blob stored twice."""

    def liveliness(name: str) -> float:
        entries = plan.packs[name]
        total = sum(e[3] for e in entries) or 1
        return sum(e[3] for e in entries if ref_of(e[0]) in plan.live) / total

    covered: dict[str, list[Entry]] = {}
    seen: set[bytes] = set()
    for name in sorted(plan.packs, key=lambda n: (-liveliness(n), n)):
        for entry in plan.packs[name]:
            if ref_of(entry[0]) in plan.live and entry[0] not in seen:
                seen.add(entry[0])
                covered.setdefault(name, []).append(entry)
    return covered


def _repack(store: ChunkStore, plan: _Plan) -> list[PackDone]:
    if not plan.repack:
        return []
    assert store.decryption is not None
    uploader = PackUploader(store.storage, store.config.encryption())
    pending: list[tuple[bytes, str, bytes]] = []
    size = 0
    try:
        kinds = {e[0]: e[1] for entries in plan.repack.values() for e in entries}
        live = blobs_by_pack(store.storage, store.host_key, store.decryption, plan.repack)
        for cid, data in live:
            pending.append((cid, kinds[cid], data))
            size += len(data)
            if size >= store.config.pack_size:
                uploader.submit(pending)
                pending, size = [], 0
        if pending:
            uploader.submit(pending)
        return uploader.finish()
    except BaseException:
        uploader.abort()
        raise


def _delete(store: ChunkStore, key: str, report: PruneReport, into: list[str], name: str) -> bool:
    try:
        store.storage.delete(key)
    except StorageError:
        report.refused.append(key)  # retention (Object Lock) or a passing fault: a later run
        return False
    into.append(name)
    return True


def _size(store: ChunkStore, key: str) -> int:
    try:
        return store.storage.size(key)
    except (FileNotFoundError, StorageError):
        return 0
