"""Pieces every streaming operation shares: hashing on the way through, throttled progress."""

from __future__ import annotations

import hashlib
import time
from typing import IO

from ..errors import IntegrityError
from ..model import ByteSink, Event, EventSink

PROGRESS_EVERY_S = 0.5


class HashingWriter:
    """Counts and hashes exactly the bytes that reach the storage writer."""

    def __init__(self, inner: ByteSink) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        self._inner.write(data)
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Progress:
    """Emits ``progress`` events at most every half second, and once at the end."""

    def __init__(self, sink: EventSink, task: str, total: int | None, unit: str = "B") -> None:
        self._sink = sink
        self._task = task
        self._total = total
        self._unit = unit
        self._last = 0.0
        self.done = 0

    def advance(self, amount: int) -> None:
        self.done += amount
        if self._total is not None and self._unit != "B":
            # Item counts from tool output are estimates; never show more than the total.
            self.done = min(self.done, self._total)
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self._emit()

    def close(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool = False) -> None:
        data = {"task": self._task, "done": self.done, "total": self._total, "unit": self._unit}
        data["final"] = final
        self._sink(Event("progress", self._task, "debug", data))


def sha256_of(stream: IO[bytes], progress: Progress | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while got := stream.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(view[:got])
        size += got
        if progress is not None:
            progress.advance(got)
    return digest.hexdigest(), size


def check_digest(name: str, expected: str, actual: str, expected_size: int, size: int) -> None:
    if size != expected_size:
        raise IntegrityError(
            f"backup {name} is damaged: {size} bytes on disk, the manifest says {expected_size}",
            hint="restore an older backup ('safehold list' shows them); this file is truncated "
            "or was changed",
        )
    if actual != expected:
        raise IntegrityError(
            f"backup {name} is damaged: sha256 {actual[:12]}… does not match the manifest's "
            f"{expected[:12]}…",
            hint="restore an older backup ('safehold list' shows them)",
        )
