"""File data written where it goes, as the chunks arrive, pack by pack, on a few threads.

The store hands chunks back grouped by pack (each pack is fetched and decrypted once), not in
file order. Every chunk's place is known from the tree (file, offset, length, across the data
runs of a file with holes), so each one is written with ``pwrite`` at its offset the moment it
arrives; a chunk shared by many files (or many times by one) is fetched once and written to
each place. A file is created at its first chunk, cut to its full size (a hole at the end has
no chunk), and closed with its owner, mode and mtime set once its last chunk is in.

Creating and closing files is most of the cost of a tree of small files, so files are spread
over ``THREADS`` workers in runs of ``RUN`` neighbours (mostly one folder's files): all of one
file's work goes to the same worker, in order, so a worker needs no lock and keeps its own open
files, and few threads contend for one folder in the kernel. Jobs are handed over in batches
(one queue operation per ``BATCH`` files, not per file); data waiting for workers is bounded
(``MAX_QUEUED``); a worker's error stops the restore at the next hand-over.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable

from ... import _proc
from .entries import Entry, damaged

THREADS = 6  # file creation waits on the filesystem more than on the CPU
RUN = 32  # neighbouring files that go to the same worker
BATCH = 64  # jobs handed over at once
BATCH_BYTES = 512 << 10  # or fewer, once they hold this much data
MAX_QUEUED = 4 << 20  # data handed to workers and not written yet (memory; no slower than 16)
MAX_OPEN = 256  # files kept open per worker between their chunks
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# (file number, offset in the file, offset in the chunk, length)
Place = tuple[int, int, int, int]
Job = tuple[int, memoryview, int, int, int]


class Places:
    """Every place each chunk's bytes go (a chunk may straddle two data runs of a file with
    holes, and the same chunk may be in many files), and how many writes each file waits for."""

    def __init__(self, files: list[Entry]) -> None:
        self.where: dict[bytes, list[Place]] = {}
        self.sizes: dict[bytes, int] = {}
        self.pending = [0] * len(files)
        for number, entry in enumerate(files):
            self._add(number, entry)

    def _add(self, number: int, entry: Entry) -> None:
        pieces = entry.data_pieces()
        index, (at, left) = 0, pieces[0] if pieces else (0, 0)
        for chunk, length in zip(entry.chunks, entry.lengths, strict=True):
            if self.sizes.setdefault(chunk, length) != length:
                raise damaged(f"chunk {chunk.hex()[:16]} has two different sizes in the tree")
            start = 0
            while start < length:
                while not left:
                    index += 1
                    at, left = pieces[index]
                take = min(left, length - start)
                self.where.setdefault(chunk, []).append((number, at, start, take))
                self.pending[number] += 1
                at, left, start = at + take, left - take, start + take
        if not self.pending[number]:
            self.pending[number] = 1  # the one job that creates it


class DataWriter:
    """Creates ``files`` under ``base`` (folders already made) and writes their chunks."""

    def __init__(
        self, base: str, files: list[Entry], *, owners: bool, creator: tuple[int, int] | None
    ) -> None:
        """``owners``: set each file's owner; ``creator``: the owner a new file gets anyway
        (None when unknown, as under a setgid folder), whose files need no chown."""
        self._files = files
        self._paths = [f"{base}/{entry.path}" for entry in files]
        self._owners = owners
        self._creator = creator
        self._direct = 0o777 & ~_umask()  # modes open() gives as they are
        self._places = Places(files)
        self._pending = self._places.pending
        self._created = [False] * len(files)
        self._queued = 0
        self._room = threading.Condition()
        self._error: BaseException | None = None
        self._queues: list[queue.SimpleQueue[list[Job] | None]] = [
            queue.SimpleQueue() for _ in range(THREADS)
        ]
        self._batches: list[list[Job]] = [[] for _ in range(THREADS)]
        self._batch_bytes = [0] * THREADS
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"safehold-restore-{n}")
            for n, q in enumerate(self._queues)
        ]

    @property
    def chunks(self) -> list[bytes]:
        """The chunks to fetch, each once."""
        return list(self._places.where)

    def run(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        """Write every chunk ``blobs`` yields; files without data are created first."""
        for thread in self._threads:
            thread.start()
        try:
            empty = memoryview(b"")
            for number, entry in enumerate(self._files):
                if not entry.chunks:
                    self._add((number, empty, 0, 0, 0))
            where, sizes, add = self._places.where, self._places.sizes, self._add
            for chunk, data in blobs:
                places = where.pop(chunk, None)
                if places is None:
                    continue  # a chunk handed back twice
                if len(data) != sizes[chunk]:
                    raise damaged(f"chunk {chunk.hex()[:16]} is not the size the tree says")
                view = memoryview(data)
                for number, at, start, length in places:
                    add((number, view, at, start, length))
            if where:
                raise damaged(f"{len(where)} chunk(s) of the snapshot were not handed back")
            for worker in range(THREADS):
                self._hand(worker)
        finally:
            # Interrupted or not, the workers stop before anyone removes the staging folder:
            # a SIGTERM inside the join would leave them writing into a folder being removed.
            with _proc.shielded():
                self._stop()

    def _add(self, job: Job) -> None:
        # Runs of neighbours (mostly one folder's files) to one worker: fewer hand-overs, and
        # fewer threads contending for the same folder's lock in the kernel.
        worker = (job[0] // RUN) % THREADS
        batch = self._batches[worker]
        batch.append(job)
        self._batch_bytes[worker] += job[4]
        if len(batch) >= BATCH or self._batch_bytes[worker] >= BATCH_BYTES:
            self._hand(worker)

    def _hand(self, worker: int) -> None:
        batch, size = self._batches[worker], self._batch_bytes[worker]
        if not batch:
            return
        self._batches[worker], self._batch_bytes[worker] = [], 0
        with self._room:
            while self._queued > MAX_QUEUED and self._error is None:
                self._room.wait()
            if self._error is not None:
                raise self._error
            self._queued += size
        self._queues[worker].put(batch)

    def _stop(self) -> None:
        for jobs in self._queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def _work(self, jobs: queue.SimpleQueue[list[Job] | None]) -> None:
        open_files: OrderedDict[int, int] = OrderedDict()
        try:
            while (batch := jobs.get()) is not None:
                if self._error is None:
                    for job in batch:
                        self._write(open_files, job)
                with self._room:
                    self._queued -= sum(job[4] for job in batch)
                    self._room.notify()
        except BaseException as exc:  # handed to the main thread, which raises it
            with self._room:
                self._error = exc
                self._room.notify_all()
            while jobs.get() is not None:
                pass
        finally:
            for fd in open_files.values():
                os.close(fd)

    def _write(self, open_files: OrderedDict[int, int], job: Job) -> None:
        number, view, at, start, length = job
        if self._pending[number] == 1 and not self._created[number]:
            self._whole(number, view, at, start, length)
            return
        fd = open_files.pop(number, None)
        if fd is None:
            fd = self._open(number)
        try:
            while length:
                done = os.pwrite(fd, view[start : start + length], at)
                at, start, length = at + done, start + done, length - done
            self._pending[number] -= 1
            if not self._pending[number]:
                self._finish(fd, self._files[number])
        except BaseException:
            os.close(fd)
            raise
        if not self._pending[number]:
            os.close(fd)
            return
        open_files[number] = fd
        if len(open_files) > MAX_OPEN:
            os.close(open_files.popitem(last=False)[1])

    def _whole(self, number: int, view: memoryview, at: int, start: int, length: int) -> None:
        """A file written by one job (most files): created with its mode when open() can give
        it, so the common small file costs open, write, utime and close."""
        entry = self._files[number]
        direct = not entry.mode & ~self._direct
        fd = os.open(self._paths[number], _CREATE, entry.mode if direct else 0o600)
        self._created[number] = True
        try:
            if entry.pieces is not None:
                os.ftruncate(fd, entry.size)
            while length:
                done = os.pwrite(fd, view[start : start + length], at)
                at, start, length = at + done, start + done, length - done
            if self._owners and (entry.uid, entry.gid) != self._creator:
                os.fchown(fd, entry.uid, entry.gid)
                direct = False  # chown clears set-id bits: mode again after it
            if not direct:
                os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        self._pending[number] = 0

    def _open(self, number: int) -> int:
        if self._created[number]:
            return os.open(self._paths[number], _REOPEN)
        entry = self._files[number]
        fd = os.open(self._paths[number], _CREATE, 0o600)
        self._created[number] = True
        # Full size at once: the chunks land anywhere in it, and a hole at the end has none.
        if self._pending[number] > 1 or entry.pieces is not None:
            os.ftruncate(fd, entry.size)
        return fd

    def _finish(self, fd: int, entry: Entry) -> None:
        if self._owners:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)  # after chown, which clears set-id bits
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every
    thread for a moment); all bits when it cannot be read, so every mode is set by chmod."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777
