"""The filesystem half of :class:`~.extract_unpack.Unpacker`: its creates, on a few threads.

Creating files is most of a restore of many small files, for GNU tar as for safehold: 0.5 ms
an ``open(O_CREAT)`` here after many deletions (ext4 without a journal scans past recently
freed inodes), a wait for the journal elsewhere. tar makes them one after the other; these
threads overlap them and spread them over the cores. The checks stay with the Unpacker, on one
thread, in the members' order; only the system calls they allowed come here, each after the
jobs it depends on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

THREADS = 6
BATCH = 16  # jobs handed to a thread at once
BATCH_HELD = 1 << 20  # or fewer, once they hold this much file data
MAX_BATCHES = 4 * THREADS
MAX_HELD = 32 << 20  # file data handed to threads and not written yet


class Names:
    """The names of the files and links made so far, as a Bloom filter of fixed size (2 MiB,
    two bits a name): a clear bit proves nothing is there, so most members need no ``lstat``;
    both bits set (maybe by other names: 1 in 80 at a million names) is looked up on disk."""

    BITS = 1 << 24

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def add(self, rel: str) -> None:
        for bit in self._bits_of(rel):
            self._bits[bit >> 3] |= 1 << (bit & 7)

    def __contains__(self, rel: str) -> bool:
        return all(self._bits[bit >> 3] >> (bit & 7) & 1 for bit in self._bits_of(rel))

    def _bits_of(self, rel: str) -> tuple[int, int]:
        code = hash(rel)
        return code & (self.BITS - 1), (code >> 32) & (self.BITS - 1)


class Jobs:
    """Jobs on ``THREADS`` threads, in batches of up to ``BATCH`` (one hand-over between
    threads per batch, not per file). A job runs after the jobs it names (its folder, a
    hardlink's source): earlier in its batch, or in a batch submitted before, which the batch
    waits for; the queue is FIFO, so that never deadlocks. Batches and the file data they hold
    are bounded; a job's error is raised by the call that retires its batch (or waits for it),
    on the submitting thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="safehold-extract")
        self._order: deque[tuple[list[str], Future[None], int]] = deque()
        self._latest: dict[str, Future[None]] = {}  # name -> the last batch that made it
        self._held = 0  # bytes of file data in submitted batches
        self._jobs: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._names: list[str] = []
        self._first: set[Future[None]] = set()
        self._batch_held = 0

    def submit(
        self, rel: str, job: Callable[..., object], *args: Any, after: Sequence[str], held: int = 0
    ) -> None:
        for name in after:
            if (future := self._latest.get(name)) is not None:
                self._first.add(future)
        self._jobs.append((job, args))
        self._names.append(rel)
        self._batch_held += held
        if len(self._jobs) >= BATCH or self._batch_held >= BATCH_HELD:
            self._flush()

    def wait_for(self, rel: str) -> None:
        self._flush()
        if (future := self._latest.get(rel)) is not None:
            future.result()

    def wait_all(self) -> None:
        self._flush()
        while self._order:
            self._retire()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _flush(self) -> None:
        if not self._jobs:
            return
        future = self._pool.submit(_run, list(self._first), self._jobs)
        for name in self._names:
            self._latest[name] = future
        self._order.append((self._names, future, self._batch_held))
        self._held += self._batch_held
        self._jobs, self._names, self._first, self._batch_held = [], [], set(), 0
        while len(self._order) > MAX_BATCHES or self._held > MAX_HELD:
            self._retire()

    def _retire(self) -> None:
        names, future, held = self._order.popleft()
        self._held -= held
        for name in names:
            if self._latest.get(name) is future:
                del self._latest[name]
        future.result()


def _run(
    first: list[Future[None]], jobs: list[tuple[Callable[..., object], tuple[Any, ...]]]
) -> None:
    for future in first:
        future.result()
    for job, args in jobs:
        job(*args)


def create(
    dest: str,
    pieces: list[tuple[int, int]],
    data: Iterable[memoryview],
    size: int | None,
    owner: tuple[int, int] | None,
    mode: int,
    mtime_ns: int,
) -> None:
    """A file's data where the archive says it goes: a sparse member's pieces at their offsets,
    then cut to ``size``, so holes stay holes (a hole at the end has no piece to write)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        chunks, view, at = iter(data), memoryview(b""), 0
        for offset, length in pieces:
            if offset != at:
                os.lseek(fd, offset, os.SEEK_SET)
            at = offset + length
            while length:
                view = view or next(chunks)
                piece, view = view[:length], view[length:]
                length -= len(piece)
                while piece:
                    piece = piece[os.write(fd, piece) :]
        if size is not None:
            os.ftruncate(fd, size)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # after chown, which clears set-id bits
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def symlink(link: str, dest: str, owner: tuple[int, int] | None, mtime_ns: int) -> None:
    os.symlink(link, dest)
    if owner is not None:
        os.lchown(dest, *owner)
    os.utime(dest, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def hardlink(source: str, dest: str) -> None:
    os.link(source, dest, follow_symlinks=False)


def lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0
