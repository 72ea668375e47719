"""The plumbing between pyrage's decrypting worker and the reader's thread: a bounded channel
and the file-like adapters ``decrypt_io`` reads from and writes to."""

from __future__ import annotations

import threading
from collections import deque

from ..model import ByteSource

PIECE = 1 << 20  # a write is queued in pieces of at most this size
HEAD_KEEP = 8192  # the start of a file, kept for messages


class Aborted(Exception):
    """Raised inside a worker when the other side has gone away."""


class Channel:
    """A bounded FIFO of byte strings from one producer thread to one consumer thread."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._items: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._ended = False  # the producer has no more
        self._closed = False  # the consumer is gone: puts fail, gets raise

    def put(self, item: bytes) -> bool:
        """Queue ``item``, waiting for room; False when the consumer has gone away."""
        with self._cond:
            while self._size >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._size += len(item)
            self._cond.notify_all()
            return True

    def get(self, block: bool = True) -> bytes | None:
        """The next item; None at the end, or when nothing is queued and not ``block``."""
        with self._cond:
            while block and not self._items and not self._ended and not self._closed:
                self._cond.wait()
            if self._closed:
                raise Aborted
            if not self._items:
                return None
            item = self._items.popleft()
            self._size -= len(item)
            self._cond.notify_all()
            return item

    @property
    def drained(self) -> bool:
        with self._cond:
            return self._ended and not self._items

    def end(self, discard: bool = False) -> None:
        with self._cond:
            self._ended = True
            if discard:
                self._items.clear()
                self._size = 0
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._size = 0
            self._cond.notify_all()


class SourceReader:
    """What ``decrypt_io`` reads: the source, keeping its head (for messages) and its error."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self.head = b""
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._source.read(size)
        except BaseException as exc:
            self.error = exc
            raise
        data = bytes(data or b"")
        if len(self.head) < HEAD_KEEP:
            self.head += data[: HEAD_KEEP - len(self.head)]
        return data


class ChannelWriter:
    """What ``decrypt_io`` writes to: authenticated plaintext, queued for the reader in pieces
    of ``PIECE`` (pyrage writes 8 KiB at a time: queueing each costs a thread hand-over)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._buffer = bytearray()
        self.written = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.written += len(data)
        if len(self._buffer) >= PIECE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            if not self._channel.put(bytes(self._buffer)):
                raise Aborted
            self._buffer.clear()
