"""One backup into the store: chunks in, one snapshot out (or nothing at all).

``with store.writer(target, kind) as w:`` takes a shared lock; ``put_stream`` cuts a stream
with FastCDC (gear seeded from the id key), names each chunk by its keyed hash and keeps only
the chunks the index does not know yet; ``put_blob`` stores one blob uncut (a tree);
``commit`` is the only way anything becomes visible. Its order is the store's safety rule:
packs committed -> one index object naming them -> the snapshot object (the commit point).
A writer killed anywhere leaves at most packs and an index no snapshot names, which prune
removes after its grace period; an exception inside ``with`` also deletes the packs it sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pyfastcdc import FastCDC

from ..errors import UsageError
from ..model import ByteSource
from ..storage.base import Storage
from . import snapshots
from .config import StoreConfig
from .hostkey import HostKey
from .index import Index, write_index
from .layout import new_snapshot_id
from .locks import StoreLock
from .prefixed import Prefixed, read_upto
from .snapshots import SnapshotInfo
from .uploader import PackUploader

Blob = tuple[bytes, str, bytes]  # id, kind, plaintext


def chunker(host_key: HostKey, config: StoreConfig) -> FastCDC:
    return FastCDC(
        avg_size=config.avg_chunk,
        min_size=config.min_chunk,
        max_size=config.max_chunk,
        seed=host_key.gear_seed,
    )


class ChunkStoreWriter:
    """Made by ``ChunkStore.writer``; see the module doc. One thread at a time."""

    def __init__(
        self,
        storage: Storage,
        host_key: HostKey,
        config: StoreConfig,
        index: Index,
        lock: StoreLock,
        target: str,
        kind: str,
        *,
        started: datetime | None = None,
        group: dict[str, Any] | None = None,
    ) -> None:
        self._storage = storage
        self.group = group
        self._key = host_key
        self._config = config
        self._index = index
        self._lock = lock
        self._uploader = PackUploader(storage, config.encryption())
        self._cdc = chunker(host_key, config)
        self.target = target
        self.kind = kind
        self.started = started if started is not None else datetime.now(UTC)
        self._pending: dict[str, list[Blob]] = {"data": [], "tree": []}
        self._pending_size = {"data": 0, "tree": 0}
        self._new: set[bytes] = set()  # sent (or about to be) by this writer
        self._refs: set[bytes] = set()
        self._bytes = 0
        self._new_bytes = 0
        self._state = "open"
        self._indexed = False

    # ---- data in ----

    def put_stream(self, reader: ByteSource, lengths: list[int] | None = None) -> list[bytes]:
        """Cut ``reader`` to its end; the chunk ids in order (repeats included). ``lengths``,
        when given, gets each chunk's length appended (a restore places chunks by offset)."""
        self._check_open()
        head = read_upto(reader, self._config.min_chunk + 1)
        if len(head) <= self._config.min_chunk:  # one chunk at most: no cutting needed
            pieces: Iterable[bytes | memoryview] = [head] if head else []
        else:
            pieces = (chunk.data for chunk in self._cdc.cut_stream(Prefixed(head, reader)))
        ids: list[bytes] = []
        chunk_id = self._key.chunk_id
        for data in pieces:
            cid = chunk_id(data)
            ids.append(cid)
            if lengths is not None:
                lengths.append(len(data))
            self._bytes += len(data)
            self._add(cid, "data", data)
        return ids

    def put_blob(self, data: bytes, kind: str = "tree") -> bytes:
        """Store ``data`` as one blob (no cutting); its id."""
        self._check_open()
        cid = self._key.chunk_id(data)
        self._bytes += len(data)
        self._add(cid, kind, data)
        return cid

    def reference(self, ids: Iterable[bytes]) -> None:
        """Blobs already in the store that the snapshot needs without putting them again
        (an unchanged subtree of an earlier snapshot); an unknown id is an IntegrityError."""
        self._check_open()
        for cid in ids:
            if cid not in self._new:
                self._index.locate(cid)  # an unknown id is an error now, not a broken snapshot
            self._refs.add(cid)

    def has_all(self, ids: Iterable[bytes]) -> bool:
        """Whether every id is stored (or put by this writer): then ``reference`` takes them."""
        return all(cid in self._new or cid in self._index for cid in ids)

    def _add(self, cid: bytes, kind: str, data: bytes | memoryview) -> None:
        self._refs.add(cid)
        if cid in self._new or cid in self._index:
            return
        self._new.add(cid)
        # Trees go in packs of their own, so listing a snapshot never fetches file data.
        group = "tree" if kind == "tree" else "data"
        # The chunker reuses its buffer for the next chunk: copy before it moves on.
        self._pending[group].append((cid, kind, bytes(data)))
        self._pending_size[group] += len(data)
        self._new_bytes += len(data)
        if self._pending_size[group] >= self._config.pack_size:
            self._flush(group)

    def _flush(self, group: str) -> None:
        if self._pending[group]:
            blobs = self._pending[group]
            self._pending[group], self._pending_size[group] = [], 0
            self._uploader.submit(blobs)

    # ---- the end ----

    def commit(self, body: dict[str, Any], stats: dict[str, int] | None = None) -> SnapshotInfo:
        """Flush packs, write their index, then the snapshot (``body`` age-encrypted)."""
        self._check_open()
        sealed_body = snapshots.encrypt_body(body, self._config.encryption())  # a bad body: now
        self._state = "committing"
        self._flush("data")
        self._flush("tree")
        done = self._uploader.finish()
        self._lock.check()
        self._indexed = True  # from here a failure leaves the packs to prune, never deletes them
        if done:
            write_index(self._storage, self._key.meta_key, {p.name: p.entries for p in done})
        info = SnapshotInfo(
            id=new_snapshot_id(self.started),
            time=self.started,
            host=socket.gethostname(),
            target=self.target,
            kind=self.kind,
            stats={
                "bytes": self._bytes,
                **(stats or {}),
                "new_bytes": self._new_bytes,
                "new_packs": len(done),
                "stored_bytes": sum(p.stored for p in done),
            },
            blobs=len(self._refs),
            group=self.group,
        )
        data = snapshots.encode(self._key.meta_key, info, self._refs, sealed_body)
        self._lock.check()
        self._storage.put_bytes(info.key, data)
        self._state = "committed"
        self._lock.release()
        return info

    def abort(self) -> None:
        """Forget everything: no snapshot, and the packs already sent are deleted."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._pending = {"data": [], "tree": []}
        try:
            if not self._indexed:
                self._uploader.abort()
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._state != "open":
            raise UsageError(f"this chunk store writer is {self._state}")

    def __enter__(self) -> ChunkStoreWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.abort()  # after commit this does nothing
