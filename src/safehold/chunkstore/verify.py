"""Verify: is every snapshot restorable from what is stored?

Structure (the backup host can do this): every index object and snapshot header opens with
the meta key, every blob a snapshot needs is in an index, and the pack holding it is stored.
``read_data`` (a fraction of the packs, chosen at random; needs the identity): each chosen
pack is fetched, decrypted (age authenticates it), its trailer compared with the index, and
every blob decompressed and checked against its keyed hash; snapshot bodies are opened too.
Problems are collected, not raised, so one report names all of them.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import IntegrityError, SafeholdError
from .index import Index, list_index_names, merge, read_index_object
from .inventory import stored_packs
from .packs import extract, fetch_pack, no_identity, read_trailer
from .snapshots import SnapshotReader, ref_of

if TYPE_CHECKING:
    from .store import ChunkStore


@dataclass
class VerifyReport:
    snapshots: int = 0
    index_objects: int = 0
    packs: int = 0  # stored
    packs_read: int = 0
    blobs_checked: int = 0
    unindexed_packs: list[str] = field(default_factory=list)  # leftovers: prune removes them
    unused_missing_packs: list[str] = field(default_factory=list)  # indexed, gone, not needed
    errors: list[str] = field(default_factory=list)
    # A pack found damaged or missing -> the snapshots that need a blob in it.
    affected: dict[str, list[str]] = field(default_factory=dict)
    bad_blobs: dict[str, list[str]] = field(default_factory=dict)  # pack -> blob ids (hex)

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(store: ChunkStore, *, read_data: float = 0.0) -> VerifyReport:
    if not 0.0 <= read_data <= 1.0:
        raise ValueError("read_data is a fraction between 0 and 1")
    if read_data > 0 and store.decryption is None:
        raise no_identity("verifying pack data (read_data)")
    report = VerifyReport()
    storage, meta = store.storage, store.host_key.meta_key
    names = list_index_names(storage)  # never the cache: verify looks at the bucket
    report.index_objects = len(names)
    objects = {}
    for name in names:
        try:
            objects[name] = read_index_object(storage, meta, name)
        except SafeholdError as exc:
            report.errors.append(f"index object {name}: {exc.message}")
    index = merge(frozenset(names), objects)
    stored = stored_packs(storage)
    report.packs = len(stored)
    report.unindexed_packs = sorted(stored - set(index.packs))
    headers = SnapshotReader(storage, meta, None)  # the bucket's headers, not the cache's
    needed = _check_snapshots(headers, index, stored, report)
    report.unused_missing_packs = sorted(set(index.packs) - stored - needed)
    if read_data > 0:
        _read_packs(store, index, sorted(stored & set(index.packs)), read_data, report)
    _name_affected(headers, index, report)
    return report


def _name_affected(headers: SnapshotReader, index: Index, report: VerifyReport) -> None:
    """Which snapshots need each bad pack (read from the headers: no identity needed)."""
    if not report.bad_blobs:
        return
    wanted = {ref_of(bytes.fromhex(h)): pack for pack, ids in report.bad_blobs.items() for h in ids}
    for snapshot_id in headers.ids():
        try:
            refs = headers.refs(snapshot_id)
        except SafeholdError:
            continue  # reported already
        for pack in sorted({wanted[r] for r in refs if r in wanted}):
            report.affected.setdefault(pack, []).append(snapshot_id)
    for pack, snapshots in report.affected.items():
        report.errors.append(
            f"pack {pack} is needed by {len(snapshots)} snapshot(s): {', '.join(snapshots)}"
        )


def _check_snapshots(
    headers: SnapshotReader, index: Index, stored: set[str], report: VerifyReport
) -> set[str]:
    needed: set[str] = set()
    by_ref = {ref_of(blob): blob for blob in index.where}  # what each ref names
    ids = headers.ids()
    report.snapshots = len(ids)
    for snapshot_id in ids:
        try:
            refs = headers.refs(snapshot_id)
        except SafeholdError as exc:
            report.errors.append(f"snapshot {snapshot_id}: {exc.message}")
            continue
        lost = [r for r in refs if r not in by_ref]
        packs = {index.where[by_ref[r]][0] for r in refs if r in by_ref}
        gone = sorted(packs - stored)
        needed |= packs
        if lost:
            report.errors.append(f"snapshot {snapshot_id}: {len(lost)} blob(s) are in no index")
        if gone:
            report.errors.append(
                f"snapshot {snapshot_id}: needs {len(gone)} missing pack(s): {', '.join(gone[:5])}"
            )
            for ref in refs:
                blob = by_ref.get(ref)
                if blob is not None and index.where[blob][0] in gone:
                    report.bad_blobs.setdefault(index.where[blob][0], []).append(blob.hex())
    return needed


def _read_packs(
    store: ChunkStore, index: Index, packs: list[str], fraction: float, report: VerifyReport
) -> None:
    assert store.decryption is not None
    chosen = secrets.SystemRandom().sample(packs, min(len(packs), math.ceil(len(packs) * fraction)))
    for name in sorted(chosen):
        try:
            plain = fetch_pack(store.storage, name, store.decryption)
            trailer = {e[0]: e for e in read_trailer(plain, name)}
        except SafeholdError as exc:
            report.errors.append(f"pack {name}: {exc.message}")
            report.bad_blobs[name] = [e[0].hex() for e in index.packs[name]]
            report.packs_read += 1
            continue
        for entry in index.packs[name]:
            try:
                if trailer.get(entry[0]) != entry:
                    raise IntegrityError(f"blob {entry[0].hex()[:16]} is not where the index says")
                extract(plain, name, entry, store.host_key)
                report.blobs_checked += 1
            except SafeholdError as exc:
                report.errors.append(f"pack {name}: {exc.message}")
                report.bad_blobs.setdefault(name, []).append(entry[0].hex())
        report.packs_read += 1
    for snapshot_id in store.headers.ids():
        try:
            store.read_body(snapshot_id)
        except SafeholdError as exc:
            report.errors.append(f"snapshot {snapshot_id}: {exc.message}")
