"""Streams (logical dumps such as ``pg_dump -Fc -Z0``) as snapshots, and back, byte for byte.

The stream goes through the writer's chunker as it is read (never whole in memory); the body
lists its chunks and lengths in order, its size and BLAKE3 hash, and the caller's ``meta``.
An uncompressed custom-format dump is what makes this pay: its table data is laid out the same
from one night to the next, so the chunks of unchanged tables are stored once. The export
checks the size and hash of what it wrote: a stream comes back exactly or not at all (the sink
may hold a prefix; the caller discards it on error).
"""

from __future__ import annotations

from typing import Any

import blake3

from ...model import ByteSink, ByteSource
from ..snapshots import SnapshotInfo
from ..store import ChunkStore
from .chunks import Reading, put_content
from .entries import damaged
from .ordered import ordered_chunks

FORMAT = "safehold-stream-1"


class _Hashing:
    """The reader, hashed and counted on the way to the chunker."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self.hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data


def backup_stream(
    store: ChunkStore,
    reader: ByteSource,
    target: str,
    meta: dict[str, Any],
    *,
    group: dict[str, Any] | None = None,
) -> SnapshotInfo:
    """Store what ``reader`` gives as one stream snapshot of ``target``; its SnapshotInfo.
    ``group``: the set it is a member of (``SnapshotInfo.group``)."""
    source = _Hashing(reader)
    with store.writer(target, "stream", group=group) as writer:
        chunks, lengths = put_content(writer, source)
        body = {
            "format": FORMAT,
            "chunks": [chunk.hex() for chunk in chunks],
            "lengths": lengths,
            "size": source.size,
            "blake3": source.hash.hexdigest(),
            "meta": meta,
        }
        stats = {"files": 1, "bytes": source.size}
        return writer.commit(body, stats)


def stream_meta(store: ChunkStore, snapshot_id: str) -> dict[str, Any]:
    """The ``meta`` a stream snapshot was stored with."""
    meta = _body(store, snapshot_id)[0].get("meta")
    return meta if isinstance(meta, dict) else {}


def export_stream(store: ChunkStore, snapshot_id: str, sink: ByteSink) -> int:
    """Write the stream of snapshot ``snapshot_id`` to ``sink``; the bytes written."""
    reading = Reading(store)
    body, chunks, lengths = _body(reading, snapshot_id)
    check = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    for data in ordered_chunks(reading, chunks, lengths):
        check.update(data)
        sink.write(data)
        size += len(data)
    if size != body["size"] or check.hexdigest() != body["blake3"]:
        raise damaged("the stream put back together does not match its size and hash")
    return size


def _body(
    store: ChunkStore | Reading, snapshot_id: str
) -> tuple[dict[str, Any], list[bytes], list[int]]:
    body = store.read_body(snapshot_id)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise damaged(f"snapshot {snapshot_id} is not a stream")
    hexes, lengths, size = body.get("chunks"), body.get("lengths"), body.get("size")
    wrong = damaged(f"snapshot {snapshot_id} lists its stream's chunks wrongly")
    if not (
        isinstance(hexes, list)
        and isinstance(lengths, list)
        and len(hexes) == len(lengths)
        and all(type(n) is int and n > 0 for n in lengths)
        and sum(lengths) == size
        and isinstance(body.get("blake3"), str)
    ):
        raise wrong
    try:
        chunks = [bytes.fromhex(text) for text in hexes]
    except (TypeError, ValueError):
        raise wrong from None
    return body, chunks, lengths
