"""What a database restore reads: the backup file, made seekable, and checked against its
manifest before anything is swapped in.

``pg_restore --jobs`` needs a seekable file, so a compressed or encrypted dump is decrypted and
decompressed in one pass into a temporary file in the repository's scratch folder (or
``TMPDIR`` when set). That file is journalled (``restore_temp``) before it is created, so a
restore killed mid-way leaves nothing the next run does not remove; a full disk while writing it
is a ``StorageFull`` naming the file, never a half-written dump handed to pg_restore.

A custom-format archive also needs its data offsets for a fast parallel restore (pg_dump writes
them only when its output can seek, see ``sources.pg_custom_toc``). They are filled in in the
temporary copy; a plain file that lacks them (a gzip backup made before safehold let pg_dump
write the file, ``pg_dump -Fc > file``) is copied there too: the copy costs far less than the
scanning pg_restore does without offsets.

The sha256 of a catalogued backup is taken of the bytes the unpacking reads (for a file read
in place: in a thread, beside pg_restore's reading of its table of contents) and checked before
pg_restore runs any of the file's SQL: a forged archive never reaches the server, not even the
staging database. A plain SQL dump is hashed first, since psql runs its statements as it streams.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .. import naming
from ..crypto import DecryptionKey, age_reader, is_age
from ..errors import DatabaseError, IntegrityError, StorageError, StorageFull
from ..model import ByteSource, Event, EventSink
from ..sinks.log import human_bytes
from ..sources import pg_admin, pg_custom_toc
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from . import dump_input, journal
from ._pipeline import Progress, check_digest, sha256_of

if TYPE_CHECKING:
    from .restore import RestorePlan

PURPOSE = "safehold restore"
TEMP_KIND = "restore_temp"
TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".dump"


class Archive:
    """The file pg_restore reads. ``confirm`` raises unless it is the backup its manifest names
    (its sha256 taken as it was unpacked, or computed from ``verify_beside`` on, or now);
    ``release`` says pg_restore is done with it, so a temporary copy goes in the background
    while the staging database is checked (removing a large file takes a while)."""

    def __init__(self, path: Path, *, digest: _Digest | None = None, temp: bool = False) -> None:
        self.path = path
        self._digest = digest
        self._temp = temp
        self._remover: threading.Thread | None = None

    def verify_beside(self, sink: EventSink) -> None:
        if self._digest is not None and self._digest.ident is None and not self._digest.known:
            self._digest.start()
            what = f"checking the sha256 of {self._digest.plan.source.name} beside pg_restore"
            sink(Event("restore", what, "debug"))

    def confirm(self) -> None:
        if self._digest is not None:
            if self._digest.ident is None and not self._digest.known:
                self._digest.start()
            self._digest.check()

    def release(self) -> None:
        if self._temp and self._remover is None:
            self._remover = threading.Thread(target=_remove, args=(self.path,), daemon=True)
            self._remover.start()

    def close(self) -> None:
        if self._digest is not None and self._digest.ident is not None:
            self._digest.halt()
        if self._remover is not None:
            self._remover.join()
        if self._temp:
            _remove(self.path)


class _Digest(threading.Thread):
    """The sha256 of the backup file, read beside the unpacking and pg_restore (all from the
    page cache); ``check`` waits for it. It emits no progress: sinks are fed by one thread at a
    time, and the unpacking or pg_restore reports theirs meanwhile."""

    def __init__(self, path: Path, plan: RestorePlan) -> None:
        super().__init__(name="safehold-verify", daemon=True)
        self.path, self.plan = path, plan
        self._halted = threading.Event()
        self._result: tuple[str, int] | None = None
        self._error: BaseException | None = None

    @property
    def known(self) -> bool:
        return self._result is not None

    def take(self, digest: str, size: int) -> None:
        """The sha256 and size of the very bytes the unpacking read: no second read needed."""
        self._result = digest, size

    def run(self) -> None:
        try:
            digest, size = hashlib.sha256(), 0
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            with self.path.open("rb") as fh:
                while not self._halted.is_set() and (got := fh.readinto(buffer)):
                    digest.update(view[:got])
                    size += got
            self._result = digest.hexdigest(), size
        except BaseException as exc:  # raised in the restoring thread, by check
            self._error = exc

    def check(self) -> None:
        if self.ident is not None:
            self.join()
        if self._error is not None:
            raise self._error
        manifest = self.plan.source.manifest
        assert self._result is not None and manifest is not None
        digest, size = self._result
        check_digest(self.plan.source.name, manifest.sha256, digest, manifest.size, size)

    def halt(self) -> None:
        self._halted.set()
        self.join()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def seekable_dump(
    storage: LocalStorage, plan: RestorePlan, sink: EventSink, key: DecryptionKey | None = None
) -> Iterator[Archive]:
    """The archive as a seekable file (pg_restore --jobs needs one), to ``confirm`` before
    anything is swapped in.

    A custom archive with its data offsets is read in place. A zstd or encrypted dump is
    decrypted and decompressed in one pass into a temp file, which is removed afterwards (age
    authenticates every chunk up to the end of the stream, which this pass reads); so is a
    custom archive without data offsets, copied. The temp copy then gets its data offsets.
    """
    path = plan.source.path
    manifest = plan.source.manifest
    size = path.stat().st_size
    wrapped = plan.zstd or plan.gzip or plan.encrypted
    pending = _Digest(path, plan) if manifest is not None and plan.format != "plain" else None
    if plan.format == "plain" or not (wrapped or lacks_offsets(path, plan)):
        if manifest is not None and pending is None:
            progress = Progress(sink, f"verify {plan.source.name}", size)
            with path.open("rb") as fh:
                digest, got = sha256_of(fh, progress)
            check_digest(plan.source.name, manifest.sha256, digest, manifest.size, got)
            progress.close()
        archive = Archive(path, digest=pending)
        try:
            archive.verify_beside(sink)
            yield archive
        finally:
            archive.close()
        return
    scratch = scratch_dir(storage)
    # Named by us, not by mkstemp: the journal must name the file before it exists.
    temp = scratch / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    entry = journal.record(storage, TEMP_KIND, {"path": str(temp)}, PURPOSE)
    archive = Archive(temp, digest=pending, temp=True)
    try:
        progress = Progress(sink, f"verify {plan.source.name}", size)
        try:
            finder, (digest, got) = _unpack(path, temp, plan, progress, key)
        except dump_input.DAMAGED as exc:
            archive.confirm()  # a checksum mismatch is the more useful message
            if isinstance(exc, IntegrityError):
                raise
            raise IntegrityError(
                f"{plan.source.name} is not a valid {_compression(plan)} stream: {exc}",
                hint="restore an older backup ('safehold list' shows them)",
            ) from None
        if pending is not None:
            pending.take(digest, got)
        fill_offsets(temp, plan, sink, finder)
        yield archive
    finally:
        archive.close()
        journal.done(storage, entry)


def _unpack(
    path: Path, temp: Path, plan: RestorePlan, progress: Progress, key: DecryptionKey | None
) -> tuple[pg_custom_toc.BlockFinder | None, tuple[str, int]]:
    """Decrypt and decompress (or copy) ``path`` into ``temp`` in one pass, hashing the file's
    bytes as they are read (what is checked is exactly what was unpacked); the data blocks of
    a custom archive are looked for on the way (the finder, or None when not one)."""
    finder = pg_custom_toc.BlockFinder() if _wants_offsets(plan) else None
    spool = _Spool(temp, plan, finder)
    try:
        with path.open("rb") as raw:
            counted = _Counted(raw, progress)
            clear: ByteSource = age_reader(counted, key) if key is not None else counted
            plain = dump_input.opened(clear, _compression(plan))
            while chunk := plain.read(1 << 20):
                spool.put(chunk)
            if key is not None:
                while clear.read(1 << 20):  # to the end: the last chunk's tag too
                    pass
            while counted.read(1 << 20):  # bytes after the stream: the manifest's hash has them
                pass
    finally:
        spool.close()
    progress.close()
    return finder, (counted.hash.hexdigest(), counted.size)


class _Spool(threading.Thread):
    """Writes the unpacked bytes into the temp file and looks for the data blocks in them, in a
    thread: beside the decompression (which releases the GIL) rather than after it."""

    def __init__(
        self, temp: Path, plan: RestorePlan, finder: pg_custom_toc.BlockFinder | None
    ) -> None:
        super().__init__(name="safehold-unpack", daemon=True)
        self.temp, self.plan, self.finder = temp, plan, finder
        self.pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # bounded memory
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

    def put(self, piece: bytes) -> None:
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


def _compression(plan: RestorePlan) -> str | None:
    return "zstd" if plan.zstd else "gzip" if plan.gzip else None


class _Counted:
    """The backup file as the unpacking reads it, hashed (sha256 releases the GIL on large
    buffers) and advancing its progress."""

    def __init__(self, raw: IO[bytes], progress: Progress) -> None:
        self._raw = raw
        self._progress = progress
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._seen(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        # igzip's reader fills buffers in place rather than calling read().
        count = int(self._raw.readinto(buffer) or 0)  # type: ignore[attr-defined]
        self._seen(memoryview(buffer)[:count])
        return count

    def _seen(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        self.size += len(data)
        self._progress.advance(len(data))


def lacks_offsets(path: Path, plan: RestorePlan) -> bool:
    """Whether ``path`` is a custom archive whose TOC has data offsets unset (read: its head).
    Only a parallel restore needs them: one job reads the blocks in file order anyway."""
    if not _wants_offsets(plan) or not path.is_file():
        return False
    try:
        return pg_custom_toc.read_toc_of(path).offsets_missing
    except (pg_custom_toc.NotUnderstood, OSError):
        return False  # pg_restore reads it as it is, or says what is wrong with it


def _wants_offsets(plan: RestorePlan) -> bool:
    return plan.format == "custom" and plan.jobs > 1


def fill_offsets(
    temp: Path, plan: RestorePlan, sink: EventSink, finder: pg_custom_toc.BlockFinder | None
) -> None:
    """Write the data offsets pg_dump could not (its output was a pipe) into the copy: where
    the unpacking found the blocks, else found now; one this cannot read stays as it is, which
    pg_restore still restores, scanning."""
    if not _wants_offsets(plan):
        return
    found = finder.result() if finder is not None else None
    try:
        fixed = pg_custom_toc.write_offsets(temp, *found) if found else pg_custom_toc.fix(temp)
    except pg_custom_toc.NotUnderstood as exc:
        sink(Event("restore", f"data offsets of {plan.source.name} left unset: {exc}", "debug"))
        return
    if fixed.written:
        what = f"filled in {fixed.written} data offsets of {plan.source.name}'s archive"
        sink(Event("restore", what, "debug"))


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


def scratch_dir(storage: LocalStorage) -> Path:
    """Where the temporary dump goes: TMPDIR when the operator set it (a disk with room),
    else the repository's scratch folder (the disk that holds the backups), else /tmp."""
    chosen = os.environ.get("TMPDIR")
    if chosen and os.path.isdir(chosen) and os.access(chosen, os.W_OK):
        return Path(chosen)
    scratch = storage.path(naming.TMP_DIR)
    try:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.gettempdir())
    return scratch if os.access(scratch, os.W_OK) else Path(tempfile.gettempdir())


def is_temp_name(path: Path) -> bool:
    """Whether ``path`` is a name ``seekable_dump`` makes (a resolver removes only those)."""
    return path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)


def is_age_file(path: Path) -> bool:
    return path.is_file() and is_age(dump_input.head(path))


def is_zstd_file(path: Path) -> bool:
    return dump_input.head(path, 4) == dump_input.ZSTD_MAGIC


def prove_dump(target: PgTarget, archive: Path, server: int, name: str) -> None:
    if dump_input.identify(archive).format == "plain":
        return  # its head was read as SQL when planning; psql checks every statement
    try:
        pg_admin.toc_entries(target, archive, server)
    except DatabaseError as exc:
        raise IntegrityError(
            f"{name} is not a readable pg_dump archive ({exc.message})",
            hint="restore --database takes pg_dump output: custom, tar, directory or plain SQL",
        ) from None
