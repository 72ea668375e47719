"""``safehold cat``: a backup's content as the tool that made it wrote it, on a stream.

What safehold added is undone on the way (age decryption, the zstd or gzip stream around a
volume's tar or a zstd dump), so a database dump comes out as a pg_dump custom-format archive
(``| pg_restore --list``) and a volume as a plain, uncompressed tar (``| tar -t``), whatever
the format it is stored in. The stored bytes are hashed as they are read and checked against
the manifest at the end; the last ``HELD_BACK`` bytes of output are held until that check
passes, so a damaged backup never reaches its end on the stream (a reader that needs the end,
like ``tar``, fails too) and the command fails with the reason.

The repository lock is held only while the backup is chosen and opened: an open file stays
readable when a prune removes it, and a slow reader never holds up backups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from .. import catalog, naming
from ..compress import open_decompressor, zstd_reader
from ..crypto import DecryptionKey, age_reader
from ..errors import IntegrityError, UsageError
from ..lock import repository_lock
from ..model import ByteSink, ByteSource, Event, EventSink, Kind, Manifest, null_sink
from ..storage import LocalStorage
from ._pipeline import HashingReader, check_digest, unlock_key
from .checks.content import Guarded, ZstdFrameWatch

CHUNK = 1 << 20
HELD_BACK = 1 << 20


@dataclass(frozen=True)
class CatResult:
    artifact: str
    kind: Kind
    target: str
    plain_bytes: int  # what the reader was offered
    sha256: str  # of the stored bytes, equal to the manifest's
    reader_left: bool = False  # the reader closed its end early; the rest was still checked


class _HeldTail:
    """Passes output on but the last ``HELD_BACK`` bytes, which ``release`` writes."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self._tail = bytearray()
        self.size = 0
        self.left = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._tail += data
        if len(self._tail) > 2 * HELD_BACK:
            self._send(bytes(self._tail[:-HELD_BACK]))
            del self._tail[:-HELD_BACK]

    def release(self) -> None:
        self._send(bytes(self._tail))
        self._tail.clear()

    def _send(self, data: bytes) -> None:
        if self.left or not data:
            return
        try:
            self._out.write(data)
        except BrokenPipeError:  # ``| head``, a pg_restore that read its TOC
            self.left = True  # keep reading: the exit status still says whether it was good


def cat_backup(
    storage: LocalStorage,
    ref: str,
    out: ByteSink,
    *,
    volume: str | None = None,
    key: DecryptionKey | None = None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> CatResult:
    """Write the plain content of backup ``ref`` (a name, a fixed ``latest`` name, a path in
    the repository, or ``latest``: the newest good database dump, or of ``volume``) to
    ``out``; raises ``IntegrityError`` when it does not match its manifest."""
    if not storage.root.is_dir():
        raise UsageError(
            f"there is no backup repository at {storage.root}",
            hint="set BACKUP_DIR or --backup-dir to the folder holding the backups",
        )
    fixed = naming.latest_link_of(ref.rsplit("/", 1)[-1])
    kind: Kind = "volume" if volume is not None or (fixed and fixed[0] == "volume") else "database"
    with repository_lock(
        storage.root, exclusive=False, timeout=lock_timeout, purpose="safehold cat"
    ):
        source = catalog.resolve(storage, ref, kind, volume)
        manifest = _checked(source, volume)
        raw = source.path.open("rb")
    with raw:
        sink(Event("cat", f"reading {source.name}", "debug", data={"artifact": source.name}))
        encrypted = manifest.encryption is not None or source.name.endswith(naming.AGE_SUFFIX)
        opened = unlock_key(storage, key, source.name) if encrypted else None
        return _stream(source.name, manifest, raw, out, opened)


def _checked(source: catalog.Resolved, volume: str | None) -> Manifest:
    manifest = source.manifest
    if manifest is None:
        raise UsageError(
            f"{source.name} is not a backup of {'this' if source.in_repository else 'a'} "
            "repository with a manifest: there is nothing to check it against",
            hint="'safehold list' shows the backups; read a foreign file directly",
        )
    if problem := catalog.identity_problem(source.name, manifest, source.path.stat().st_size):
        raise catalog.identity_error(source.name, problem)  # resolve checks it too: one rule
    if volume is not None and (manifest.kind not in ("volume", "safety") or
                               manifest.target != volume):  # fmt: skip
        raise UsageError(
            f"{source.name} is not a backup of volume {volume} ({manifest.kind} {manifest.target})",
            hint="name a backup of that volume, or leave out --volume",
        )
    return manifest


def _stream(
    name: str, manifest: Manifest, raw: IO[bytes], out: ByteSink, key: DecryptionKey | None
) -> CatResult:
    hashed = HashingReader(raw)
    clear: ByteSource = age_reader(hashed, key) if key is not None else hashed
    held = _HeldTail(out)
    try:
        plain = Guarded(_plain(manifest, clear), name)
        while chunk := plain.read(CHUNK):
            held.write(chunk)
        # The decompressor may stop at the end of its frame, and age checks its last tag
        # only at the end of the stream: both are read to their ends.
        while clear.read(CHUNK):
            pass
        hashed.drain()
    except IntegrityError:
        hashed.drain()  # a checksum mismatch is the clearer message when it applies
        check_digest(name, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size)
        raise
    check_digest(name, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size)
    held.release()
    return CatResult(name, manifest.kind, manifest.target, held.size, hashed.hexdigest(), held.left)


def _plain(manifest: Manifest, clear: ByteSource) -> ByteSource:
    """The stream inside the compression safehold added; a dump's own (pg_dump's) stays."""
    if manifest.compression == "zstd":
        return zstd_reader(ZstdFrameWatch(clear))
    if manifest.kind in ("volume", "safety"):
        return open_decompressor(manifest.compression, clear)
    return clear
