"""The WAL archive: ``wal-push`` (PostgreSQL's archive_command) and ``wal-fetch``
(restore_command), and the continuity check of the archived chain.

Layout in the repository and in each copy location: ``wal/<name>.zst`` (the file, zstd; or
``wal/<name>.zst.age`` when encrypted) and ``wal/<name>.sha256`` (the sha256 and size of the
*plain* file, and the stored suffix). The sidecar is written last in each place: it is the
commit point, so a segment without one was never acknowledged to the server (which pushes it
again). No repository lock is taken: every write is atomic, and archiving must never wait for a
backup.

The server starts a process for every file it archives or fetches, so this module imports only
what those need (encryption only when configured): start-up time is archiving throughput.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import zstandard

from ... import naming
from ...compress.zstd import ZstdError, zstd_reader
from ...errors import IntegrityError, SafeholdError, StorageError, UsageError
from ...naming import AGE_SUFFIX as SUFFIX
from ...storage import LocalStorage, Storage
from ...storage.local import fsync_dir

if TYPE_CHECKING:
    from ...crypto import DecryptionKey, EncryptionKey

PREFIX = naming.WAL_DIR
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
NAME_RE = re.compile(
    r"^(?:[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup)$"
)
SEGMENT_SIZE = 16 * 1024 * 1024  # the default wal_segment_size; the chain check assumes it
ZSTD_LEVEL = 3


class WalMissing(SafeholdError):
    """The archive has no such file: for restore_command, the normal end of recovery."""

    exit_code = 1


@dataclass(frozen=True)
class PushResult:
    name: str
    size: int
    stored: int  # compressed bytes written; 0 when the archive already had it
    already: bool


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"{name!r} is not a WAL segment, .history or .backup file name",
            hint="PostgreSQL passes %p (push) and %f (fetch); check archive/restore_command",
        )
    return name


def sum_key(name: str) -> str:
    return f"{PREFIX}/{name}.sha256"


@dataclass(frozen=True)
class WalArchive:
    """Where WAL goes and how: the repository first, then each copy location; encrypted to
    ``encryption`` when set. ``decryption`` opens encrypted files on fetch."""

    primary: Storage
    copies: tuple[tuple[str, Storage], ...] = ()
    encryption: EncryptionKey | None = None
    decryption: DecryptionKey | None = None

    def places(self) -> list[tuple[str, Storage]]:
        return [("local", self.primary), *self.copies]


@dataclass(frozen=True)
class _Sum:
    """A sidecar: sha256 and size of the *plain* file, and the stored file's suffix."""

    sha256: str
    size: int
    suffix: str = "zst"

    @property
    def encrypted(self) -> bool:
        return self.suffix.endswith(SUFFIX)

    def line(self) -> bytes:
        return f"{self.sha256} {self.size} {self.suffix}\n".encode()


def _read_sum(storage: Storage, name: str) -> _Sum | None:
    try:
        fields = storage.read_bytes(sum_key(name)).decode("ascii").split()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        fields = []
    if len(fields) not in (2, 3) or not fields[1].isdigit() or len(fields[0]) != 64:
        raise IntegrityError(f"archived WAL {name}: its checksum file is damaged")
    if len(fields) == 3 and fields[2] not in ("zst", f"zst{SUFFIX}"):
        raise IntegrityError(f"archived WAL {name}: unknown stored format {fields[2]!r}")
    return _Sum(fields[0], int(fields[1]), *fields[2:])


def _data_key(name: str, known: _Sum) -> str:
    return f"{PREFIX}/{name}.{known.suffix}"


def push(archive: WalArchive | Storage, path: Path, *, level: int = ZSTD_LEVEL) -> PushResult:
    """Archive one file in every place; returns only once it is durable in all of them (data,
    then sidecar). A place that already holds an identical copy is left alone."""
    archive = archive if isinstance(archive, WalArchive) else WalArchive(archive)
    name = check_name(Path(path).name)
    try:
        data = Path(path).read_bytes()  # a segment is 16 MiB: one read, one hash, one frame
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    stored: bytes | None = None
    written, already = 0, True
    for where, storage in archive.places():
        known = _read_sum(storage, name)
        if known is not None and storage.exists(_data_key(name, known)):
            if (known.sha256, known.size) == (digest, len(data)):
                continue
            raise IntegrityError(
                f"archived WAL {name} already exists with different content in {where} "
                f"(sha256 {known.sha256[:12]}… there, {digest[:12]}… pushed)",
                hint="two servers may be archiving into one repository, or the archive belongs "
                "to an older cluster: give each cluster its own BACKUP_DIR",
            )
        if stored is None:
            stored = _pack(data, level, archive.encryption, archive.primary)
        entry = _Sum(digest, len(data), f"zst{SUFFIX}" if archive.encryption else "zst")
        if isinstance(storage, LocalStorage):
            storage.ensure()
        storage.put_bytes(_data_key(name, entry), stored)
        storage.put_bytes(sum_key(name), entry.line())
        written, already = written + len(stored), False
    return PushResult(name, len(data), written, already=already)


def _pack(data: bytes, level: int, key: EncryptionKey | None, primary: Storage) -> bytes:
    compressed = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    if key is None:
        return compressed
    from ...crypto import seal_age
    from .._pipeline import bind_key

    bound = bind_key(primary, key)
    assert bound is not None
    return seal_age(compressed, bound)


def fetch(archive: WalArchive | Storage, name: str, dest: Path, *, durable: bool = True) -> int:
    """Decompress ``name`` into ``dest`` (atomically), verified against its sha256; returns the
    size. Places are tried in order: a copy that is missing or damaged in one is read from the
    next. A file no place has raises ``WalMissing``; one only damaged copies, ``IntegrityError``."""
    archive = archive if isinstance(archive, WalArchive) else WalArchive(archive)
    check_name(name)
    damaged: IntegrityError | None = None
    for where, storage in archive.places():
        try:
            known = _read_sum(storage, name)
            if known is None:
                continue
            return _fetch_one(storage, name, known, Path(dest), archive.decryption, durable)
        except IntegrityError as exc:
            if len(archive.places()) > 1:
                exc.message = f"{where}: {exc.message}"
            damaged = damaged or exc
    if damaged is not None:
        raise damaged
    raise WalMissing(f"{name} is not in the WAL archive")


def _fetch_one(
    storage: Storage,
    name: str,
    known: _Sum,
    dest: Path,
    key: DecryptionKey | None,
    durable: bool = True,
) -> int:
    temp = dest.with_name(f".{dest.name}.safehold-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open_reader(_data_key(name, known)) as raw, temp.open("xb") as out:
            plain = _decrypting(storage, raw, key, name) if known.encrypted else raw
            reader = zstd_reader(plain)
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        if (digest.hexdigest(), size) != (known.sha256, known.size):
            raise IntegrityError(
                f"archived WAL {name} is damaged: sha256/size do not match its checksum file",
                hint="recovery cannot continue past this segment; restore to an earlier time",
            )
        os.replace(temp, dest)
        if durable:
            fsync_dir(dest.parent)
    except FileNotFoundError as exc:
        if exc.filename is None or Path(str(exc.filename)) != temp:  # not DEST's folder
            raise IntegrityError(
                f"archived WAL {name} has a checksum file but its data is gone",
                hint="recovery cannot continue past this segment; restore to an earlier time",
            ) from exc
        raise
    except ZstdError as exc:
        raise IntegrityError(
            f"archived WAL {name} is damaged: {exc}",
            hint="recovery cannot continue past this segment; restore to an earlier time",
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return size


def _decrypting(
    storage: Storage, raw: IO[bytes], key: DecryptionKey | None, name: str
) -> IO[bytes]:
    from ...crypto import age_reader
    from .._pipeline import unlock_key

    return age_reader(raw, unlock_key(storage, key, name))


def stored_keys(storage: Storage, name: str) -> list[str]:
    """The keys of one archived file, sidecar first (the commit point goes first on removal)."""
    known = _read_sum(storage, name)
    suffixes = [known.suffix] if known is not None else ["zst", f"zst{SUFFIX}"]
    return [sum_key(name), *(f"{PREFIX}/{name}.{suffix}" for suffix in suffixes)]


def archived(storage: Storage) -> list[str]:
    """Names of committed files (those with a sidecar), sorted."""
    suffix = ".sha256"
    return sorted(
        key.rsplit("/", 1)[1][: -len(suffix)]
        for key in storage.list(PREFIX)
        if key.endswith(suffix)
    )


def lsn_value(lsn: str) -> int:
    """'16/B374D848' as a number, to compare positions."""
    try:
        high, low = lsn.split("/")
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise UsageError(f"{lsn!r} is not an LSN", hint="an LSN looks like 0/3000060") from None


def segment_of(lsn: str, timeline: int, segment_size: int = SEGMENT_SIZE) -> str:
    """The segment file that holds ``lsn`` ('0/2000028') on ``timeline``."""
    number = lsn_value(lsn) // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def next_segment(name: str, segment_size: int = SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    seg += 1
    if seg >= per_log:
        log, seg = log + 1, 0
    return f"{timeline:08X}{log:08X}{seg:08X}"
