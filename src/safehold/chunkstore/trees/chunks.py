"""How trees use the store: file data in as chunk ids with their lengths, chunks a file had
last time taken again without reading it, and blobs out through one index.

Restore writes chunks at their offsets as they arrive pack by pack, out of order, so a tree
entry records every chunk's length up front. A reading session loads the store's index once:
the store would otherwise load it again for every ``read_blobs`` call (an export makes one
per window).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ...model import ByteSource
from ..index import Index
from ..store import ChunkStore
from ..writer import ChunkStoreWriter


def put_content(writer: ChunkStoreWriter, reader: ByteSource) -> tuple[list[bytes], list[int]]:
    """Chunk, deduplicate and store what ``reader`` gives; its chunk ids and lengths."""
    lengths: list[int] = []
    return writer.put_stream(reader, lengths=lengths), lengths


def store_id(store: ChunkStore) -> str:
    """What tells this store from another (public: the config's id key check)."""
    return str(store.config.id_key_check)


def reuse(writer: ChunkStoreWriter, chunks: Sequence[bytes]) -> bool:
    """True when the store still holds every chunk; they then count as the snapshot's."""
    if not writer.has_all(chunks):
        return False  # pruned since: the file is read again
    writer.reference(chunks)
    return True


class Reading:
    """The store as one restore, listing or export reads it: one index for every call."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._index = store.index()

    def read_body(self, snapshot_id: str) -> dict[str, Any]:
        return self.store.read_body(snapshot_id)

    def read_blobs(self, ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        return self.store.read_blobs(ids, index=self._index)

    def read_last(self, ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """``read_blobs`` for the last time: the blobs are grouped by pack before this returns,
        so the index (tens of MB for a large store) is let go while they are read."""
        blobs = self.read_blobs(ids)
        self._index = Index()
        return blobs
