"""Unpacking a wrapped dump into the seekable copy pg_restore reads: decrypt and decompress in
one pass, hashing the stored bytes as they are read, writing on a thread of its own and looking
for the custom archive's data blocks on the way (see ``restore_input``)."""

from __future__ import annotations

import errno
import os
import queue
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ...crypto import DecryptionKey, age_reader
from ...errors import StorageError, StorageFull
from ...model import ByteSource
from ...sinks.log import human_bytes
from ...sources import pg_custom_toc
from .._pipeline import Hasher, HashingReader, Progress
from . import dump_input

if TYPE_CHECKING:
    from .plan import RestorePlan


def unpack(
    path: Path,
    temp: Path,
    plan: RestorePlan,
    progress: Progress,
    key: DecryptionKey | None,
    hasher: Hasher,
    find: bool = True,
) -> tuple[pg_custom_toc.BlockFinder | None, int]:
    """Decrypt and decompress (or copy) ``path`` into ``temp`` in one pass, hashing the file's
    bytes as they are read (what is checked is exactly what was unpacked); with ``find`` the
    data blocks of a custom archive are looked for on the way (the finder, or None when not
    one). Returns the finder and the number of bytes read."""
    finder = pg_custom_toc.BlockFinder() if find and wants_offsets(plan) else None
    spool = _Spool(temp, plan, finder)
    try:
        with path.open("rb") as raw:
            size = _unpack_stream(raw, spool, plan, progress, key, hasher)
    finally:
        spool.close()
    progress.close()
    return finder, size


def _unpack_stream(
    raw: IO[bytes],
    spool: _Spool,
    plan: RestorePlan,
    progress: Progress,
    key: DecryptionKey | None,
    hasher: Hasher,
) -> int:
    counted = HashingReader(raw, progress, hasher=hasher)
    clear: ByteSource = age_reader(counted, key) if key is not None else counted
    plain = dump_input.opened(clear, compression(plan))
    while chunk := plain.read(1 << 20):
        spool.put(chunk)
    if key is not None:
        while clear.read(1 << 20):  # to the end: the last chunk's tag too
            pass
    while counted.read(1 << 20):  # bytes after the stream: the manifest's hash has them
        pass
    return counted.size


class _Spool(threading.Thread):
    """Writes the unpacked bytes into the temp file and looks for the data blocks in them, in a
    thread: beside the decompression (which releases the GIL) rather than after it."""

    def __init__(
        self, temp: Path, plan: RestorePlan, finder: pg_custom_toc.BlockFinder | None
    ) -> None:
        super().__init__(name="safehold-unpack", daemon=True)
        self.temp, self.plan, self.finder = temp, plan, finder
        self.pieces: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=8)  # bounded
        self.error: OSError | None = None
        try:
            self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _write_error(exc, temp, plan) from None
        self.start()

    def run(self) -> None:
        while (piece := self.pieces.get()) is not None:
            if self.error is not None:
                continue  # drained, so the producer never blocks
            try:
                view = memoryview(piece)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self.error = exc
                continue
            if self.finder is not None and self.finder.failed is None:
                try:
                    self.finder.feed(piece)
                except Exception as exc:  # only an optimisation: it must not stall the unpacking
                    self.finder.failed = repr(exc)

    def put(self, piece: bytes | memoryview) -> None:
        if self.error is not None:
            raise _write_error(self.error, self.temp, self.plan)
        self.pieces.put(piece)

    def close(self) -> None:
        self.pieces.put(None)
        self.join()
        try:
            os.close(self.fd)
        except OSError as exc:  # a full disk can surface only here (e.g. on NFS)
            self.error = self.error or exc
        if self.error is not None:
            raise _write_error(self.error, self.temp, self.plan)


def compression(plan: RestorePlan) -> str | None:
    return "zstd" if plan.zstd else "gzip" if plan.gzip else None


def _write_error(exc: OSError, temp: Path, plan: RestorePlan) -> StorageError:
    unwrapped = "decompressed " if plan.zstd or plan.gzip or plan.encrypted else ""
    what = f"the {unwrapped}copy of {plan.source.name} that pg_restore reads"
    untouched = f"; the database {plan.database!r} was not touched"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"no space left on the device holding {temp.parent} while writing {temp.name} "
            f"({what}, {human_bytes(temp.stat().st_size if temp.exists() else 0)} written)"
            f"{untouched}",
            hint=f"free space in {temp.parent} (the dump needs a few times "
            f"{human_bytes(plan.source.path.stat().st_size)} uncompressed), or set TMPDIR to a "
            "folder on a disk with room; the partial file was removed",
        )
    return StorageError(
        f"cannot write {temp} ({what}): {exc.strerror or exc}{untouched}",
        hint="fix the folder's permissions, or set TMPDIR to a writable folder",
    )


def wants_offsets(plan: RestorePlan) -> bool:
    """Only a parallel restore of a custom archive needs its data offsets."""
    return plan.format == "custom" and plan.jobs > 1
