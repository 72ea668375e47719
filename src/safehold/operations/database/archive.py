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

The digest of a catalogued backup (its BLAKE3 when the manifest has one, else its sha256: see
``_pipeline.gate_hasher``) is taken of the bytes the unpacking reads (for a file read in place:
in a thread, beside pg_restore's reading of its table of contents) and checked before pg_restore
runs any of the file's SQL: a forged archive never reaches the server, not even the staging
database. A plain SQL dump is hashed first, since psql runs its statements as it streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ... import naming
from ...crypto import DecryptionKey, is_age
from ...errors import DatabaseError, IntegrityError
from ...model import Event, EventSink, Manifest
from ...sources import pg_admin, pg_custom_toc
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from .. import journal
from .._pipeline import HashingReader, Progress, check_digest, gate_hasher
from . import dump_input
from . import unpack as restore_unpack

if TYPE_CHECKING:
    from .plan import RestorePlan

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
            name, algorithm = self._digest.plan.source.name, self._digest.algorithm
            what = f"checking the {algorithm} of {name} beside pg_restore"
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
    """The digest of the backup file, read beside the unpacking and pg_restore (all from the
    page cache); ``check`` waits for it. It emits no progress: sinks are fed by one thread at a
    time, and the unpacking or pg_restore reports theirs meanwhile."""

    def __init__(self, path: Path, plan: RestorePlan, manifest: Manifest) -> None:
        super().__init__(name="safehold-verify", daemon=True)
        self.path, self.plan, self.manifest = path, plan, manifest
        self.algorithm, self.expected, self.hasher = gate_hasher(manifest)
        self._halted = threading.Event()
        self._result: tuple[str, int] | None = None
        self._error: BaseException | None = None

    @property
    def known(self) -> bool:
        return self._result is not None

    def take(self, digest: str, size: int) -> None:
        """The digest and size of the very bytes the unpacking read: no second read needed."""
        self._result = digest, size

    def run(self) -> None:
        try:
            digest, size = self.hasher, 0
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
        assert self._result is not None
        digest, size = self._result
        name, expected = self.plan.source.name, self.expected
        check_digest(name, expected, digest, self.manifest.size, size, self.algorithm)

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
    pending = None
    if manifest is not None and plan.format != "plain":
        pending = _Digest(path, plan, manifest)
    if plan.format == "plain" or not (wrapped or lacks_offsets(path, plan)):
        if manifest is not None and pending is None:
            progress = Progress(sink, f"verify {plan.source.name}", size)
            algorithm, expected, hasher = gate_hasher(manifest)
            with path.open("rb") as fh:
                counted = HashingReader(fh, progress, hasher=hasher)
                while counted.read(1 << 20):
                    pass
            digest, got = hasher.hexdigest(), counted.size
            check_digest(plan.source.name, expected, digest, manifest.size, got, algorithm)
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
            # Its own hasher: after a failure ``confirm`` reads the file afresh with pending's.
            hasher = gate_hasher(manifest)[2] if manifest is not None else hashlib.sha256()
            recorded = _recorded_offsets(manifest)
            finder, got = restore_unpack.unpack(
                path, temp, plan, progress, key, hasher, find=recorded is None
            )
        except dump_input.DAMAGED as exc:
            archive.confirm()  # a checksum mismatch is the more useful message
            if isinstance(exc, IntegrityError):
                raise
            raise IntegrityError(
                f"{plan.source.name} is not a valid {restore_unpack.compression(plan)} "
                f"stream: {exc}",
                hint="restore an older backup ('safehold list' shows them)",
            ) from None
        if pending is not None:
            pending.take(hasher.hexdigest(), got)
        fill_offsets(temp, plan, sink, finder, recorded)
        yield archive
    finally:
        archive.close()
        journal.done(storage, entry)


def lacks_offsets(path: Path, plan: RestorePlan) -> bool:
    """Whether ``path`` is a custom archive whose TOC has data offsets unset (read: its head).
    Only a parallel restore needs them: one job reads the blocks in file order anyway."""
    if not restore_unpack.wants_offsets(plan) or not path.is_file():
        return False
    try:
        return pg_custom_toc.read_toc_of(path).offsets_missing
    except (pg_custom_toc.NotUnderstood, OSError):
        return False  # pg_restore reads it as it is, or says what is wrong with it


def _recorded_offsets(manifest: Manifest | None) -> dict[int, int] | None:
    """The data offsets the backup found as the dump went by (``facts["data_offsets"]``)."""
    recorded = manifest.facts.get("data_offsets") if manifest is not None else None
    if not isinstance(recorded, dict):
        return None
    try:
        return {int(dump_id): int(at) for dump_id, at in recorded.items()}
    except (TypeError, ValueError):
        return None


def fill_offsets(
    temp: Path,
    plan: RestorePlan,
    sink: EventSink,
    finder: pg_custom_toc.BlockFinder | None,
    recorded: dict[int, int] | None = None,
) -> None:
    """Write the data offsets pg_dump could not (its output was a pipe) into the copy: those
    the backup recorded (each checked against the block header it points at), or where the
    unpacking found the blocks, else found now; one this cannot read stays as it is, which
    pg_restore still restores, scanning."""
    if not restore_unpack.wants_offsets(plan):
        return
    found = finder.result() if finder is not None else None
    if recorded is not None:
        try:
            found = pg_custom_toc.checked_positions(temp, recorded)
        except pg_custom_toc.NotUnderstood as exc:  # then looked for in the copy
            sink(Event("restore", f"recorded data offsets not used: {exc}", "debug"))
    try:
        fixed = pg_custom_toc.write_offsets(temp, *found) if found else pg_custom_toc.fix(temp)
    except pg_custom_toc.NotUnderstood as exc:
        sink(Event("restore", f"data offsets of {plan.source.name} left unset: {exc}", "debug"))
        return
    if fixed.written:
        what = f"filled in {fixed.written} data offsets of {plan.source.name}'s archive"
        sink(Event("restore", what, "debug"))


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
