"""Reading a stream on a thread of its own, a few chunks ahead of its consumer.

A restore's decompression (ISA-L or libzstd), the sha256 of the compressed bytes and age's
decryption all release the GIL, so on their own thread they overlap with the extraction, as
the gzip process beside GNU tar does. The consumer sees an ordinary ``read``: the bytes come in
order, and whatever the source raised (a damaged stream, a truncated file, a wrong key) is
raised again by the ``read`` that reaches that point, after every byte read before it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from types import TracebackType

from ..model import ByteSource

CHUNK = 1 << 20
DEPTH = 8  # chunks read ahead: bounds the memory (8 MiB), enough to ride out a slow write
_POLL_S = 0.05  # how often a blocked producer looks whether the consumer gave up

_Item = bytes | BaseException


class ReadAhead:
    """``read`` of ``source`` in ``chunk`` pieces on a thread, ``depth`` chunks ahead.
    ``on_take`` runs on the consumer's thread each time it takes a chunk (progress events
    belong there: event sinks are not thread-safe). Use it as a context manager, or call
    ``close()``: the thread must not outlive the stream it reads."""

    def __init__(
        self,
        source: ByteSource,
        *,
        chunk: int = CHUNK,
        depth: int = DEPTH,
        on_take: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._chunk = chunk
        self._on_take = on_take
        self._queue: queue.Queue[_Item] = queue.Queue(depth)
        self._stop = threading.Event()
        self._data = b""
        self._pos = 0
        self._ended: BaseException | None = None  # the source's error: every later read raises it
        self._eof = False
        self._thread = threading.Thread(target=self._produce, name="safehold-read", daemon=True)
        self._thread.start()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(self._chunk), b""))
        if self._pos >= len(self._data) and not self._next():
            return b""
        start, data = self._pos, self._data
        if start == 0 and size >= len(data):
            self._pos = len(data)
            return data  # the whole chunk, not a copy
        self._pos = min(len(data), start + size)
        return data[start : self._pos]

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Up to ``len(buffer)`` bytes copied in (igzip's reader fills its buffer this way)."""
        if self._pos >= len(self._data) and not self._next():
            return 0
        start = self._pos
        self._pos = min(len(self._data), start + len(buffer))
        memoryview(buffer).cast("B")[: self._pos - start] = memoryview(self._data)[
            start : self._pos
        ]
        return self._pos - start

    def finish(self) -> None:
        """Read to the end (the bytes are dropped) and wait for the thread: after this, the
        source is the caller's again."""
        while self.read(self._chunk):
            pass
        self._thread.join()

    def close(self) -> None:
        """Stop the thread (it ends after its current read) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_S)  # unblocks a producer waiting for room
        self._thread.join()

    def _next(self) -> bool:
        if self._ended is not None:
            raise self._ended
        if self._eof:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = item
            raise item
        if self._on_take is not None:
            self._on_take()
        if not item:
            self._eof = True
            self._thread.join()
            return False
        self._data, self._pos = item, 0
        return True

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: _Item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
