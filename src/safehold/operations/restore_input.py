"""What a database restore reads: the backup file, verified and made seekable.

``pg_restore --jobs`` needs a seekable file, so a compressed or encrypted dump is hashed,
decrypted and decompressed in one pass into a temporary file in the repository's scratch folder
(or ``TMPDIR`` when set). That file is journalled (``restore_temp``) before it is created, so a
restore killed mid-way leaves nothing the next run does not remove; a full disk while writing it
is a ``StorageFull`` naming the file, never a half-written dump handed to pg_restore.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .. import naming
from ..crypto import DecryptionKey, age_reader, is_age
from ..errors import DatabaseError, IntegrityError, StorageError, StorageFull
from ..model import ByteSource, EventSink
from ..sinks.log import human_bytes
from ..sources import pg_admin
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from . import dump_input, journal
from ._pipeline import HashingReader, Progress, check_digest, sha256_of

if TYPE_CHECKING:
    from .restore import RestorePlan

PURPOSE = "safehold restore"
TEMP_KIND = "restore_temp"
TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".dump"


@contextlib.contextmanager
def seekable_dump(
    storage: LocalStorage, plan: RestorePlan, sink: EventSink, key: DecryptionKey | None = None
) -> Iterator[Path]:
    """The verified archive as a seekable file (pg_restore --jobs needs one).

    A plain dump is hashed in place. A zstd or encrypted dump is hashed, decrypted and
    decompressed in the same pass into a temp file, which is removed afterwards (age
    authenticates every chunk up to the end of the stream, which this pass reads).
    """
    path = plan.source.path
    manifest = plan.source.manifest
    size = path.stat().st_size
    progress = Progress(sink, f"verify {plan.source.name}", size)
    if not (plan.zstd or plan.gzip or plan.encrypted) or plan.format == "plain":
        if manifest is not None:  # (a plain SQL dump streams into psql as it is read)
            with path.open("rb") as fh:
                digest, got = sha256_of(fh, progress)
            check_digest(plan.source.name, manifest.sha256, digest, manifest.size, got)
            progress.close()
        yield path
        return
    scratch = scratch_dir(storage)
    # Named by us, not by mkstemp: the journal must name the file before it exists.
    temp = scratch / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    entry = journal.record(storage, TEMP_KIND, {"path": str(temp)}, PURPOSE)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with path.open("rb") as raw, os.fdopen(fd, "wb") as out:
            hashed = HashingReader(raw, progress)
            compression = "zstd" if plan.zstd else "gzip" if plan.gzip else None
            try:
                clear: ByteSource = age_reader(hashed, key) if key is not None else hashed
                plain = dump_input.opened(clear, compression)
                while chunk := plain.read(1 << 20):
                    _write(out, chunk, temp, plan)
                if key is not None:
                    while clear.read(1 << 20):  # to the end: the last chunk's tag too
                        pass
            except dump_input.DAMAGED as exc:
                # Finish hashing first: a checksum mismatch is the more useful message.
                hashed.drain()
                if manifest is not None:
                    check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                                 manifest.size, hashed.size)  # fmt: skip
                if isinstance(exc, IntegrityError):
                    raise
                raise IntegrityError(
                    f"{plan.source.name} is not a valid {compression} stream: {exc}",
                    hint="restore an older backup ('safehold list' shows them)",
                ) from None
            if manifest is not None:
                check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                             manifest.size, hashed.size)  # fmt: skip
            _flush(out, temp, plan)
        progress.close()
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        journal.done(storage, entry)


def _write(out: IO[bytes], chunk: bytes, temp: Path, plan: RestorePlan) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise _write_error(exc, temp, plan) from None


def _flush(out: IO[bytes], temp: Path, plan: RestorePlan) -> None:
    # A full disk may surface only when buffered bytes reach it: flush inside the guard.
    try:
        out.flush()
    except OSError as exc:
        raise _write_error(exc, temp, plan) from None


def _write_error(exc: OSError, temp: Path, plan: RestorePlan) -> StorageError:
    what = f"the decompressed copy of {plan.source.name} that pg_restore reads"
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
