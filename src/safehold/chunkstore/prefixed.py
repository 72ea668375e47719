"""A stream whose first bytes were already read: they are served again, then the rest.

``put_stream`` reads the first ``min_chunk + 1`` bytes before cutting: a stream that ends
within them is a single chunk (FastCDC never cuts below its minimum), so it is hashed at once
instead of paying the chunker's per-stream buffer (``2 * max_chunk`` bytes, allocated and
zeroed), which dominates for many small files.
"""

from __future__ import annotations

from ..model import ByteSource


def read_upto(source: ByteSource, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only at the end of ``source`` (pipes return short reads)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        data = source.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


class Prefixed:
    """``head``, then what ``source`` still has."""

    def __init__(self, head: bytes, source: ByteSource) -> None:
        self._head = memoryview(head)
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._head:
            count = len(self._head) if size < 0 else min(size, len(self._head))
            piece = bytes(self._head[:count])
            self._head = self._head[count:]
            return piece
        return self._source.read(size)
