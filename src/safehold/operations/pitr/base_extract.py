"""Unpacking a base backup into a data folder, checksummed and flushed as it is written.

From the first place with a good copy, through sha256 and age into ``zstd -d``, whose output
this process unpacks itself (``_Unpack``): each file's CRC-32C, the checksum pg_basebackup
writes into ``backup_manifest``, is computed over the bytes as they are written, so checking
them against the manifest (``manifest.check_manifest``) needs no second read of every file, as
``pg_verifybackup`` does. A finished file goes to a pool of flush threads: on this kind of
disk every fsync waits for a cache flush of the device, and several at once share one.
Files are created owned by the server's OS user: a chown after their fsync would leave every
inode dirty again for the server's own fsync pass at start-up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ... import _proc
from ...crypto import age_reader
from ...errors import IntegrityError
from ...model import Event, EventSink
from ...storage import LocalStorage
from ...storage.local import fsync_dir
from .._pipeline import HashingReader, check_digest, sha256_of, unlock_key
from . import archive as wal
from .base import BaseBackup, crc32c_extend, tar_header

FLUSH_THREADS = 4
FLUSH_STEP = 64 << 20  # a large file is flushed every 64 MiB too: writeback starts early
CHUNK = 1 << 20
DEPTH = 32  # decompressed MiB read ahead of the unpacking
MANIFEST = "backup_manifest"


@dataclass
class Unpacked:
    """What the stream held: each file's size and CRC-32C (hex, as in the manifest; None
    without a CRC-32C), and the manifest's bytes (None when the tar had none)."""

    files: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    manifest: bytes | None = None


def clear(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def extract(
    archive: wal.WalArchive, base: BaseBackup, flusher: Flusher, sink: EventSink
) -> tuple[str, Unpacked]:
    """Unpack ``base`` into ``flusher.folder`` from the first place with a good copy; returns
    that place's name and what was unpacked. The caller runs ``flusher.finish()``."""
    target_dir = flusher.folder
    failures: list[str] = []
    for where, storage in archive.places():
        try:
            raw = storage.open_reader(base.data_key)
        except FileNotFoundError:
            failures.append(f"{where}: missing")
            continue
        try:
            if isinstance(storage, LocalStorage) and base.encryption is None:
                digest, size, unpacked = _from_file(storage.path(base.data_key), raw, flusher)
            else:
                source = HashingReader(raw)
                plain: IO[bytes] | HashingReader = source
                if base.encryption is not None:
                    plain = age_reader(source, unlock_key(storage, archive.decryption, base.name))
                unpacked = _unzstd(plain, flusher)
                source.drain()
                digest, size = source.hexdigest(), source.size
            check_digest(base.name, base.sha256, digest, base.size, size)
            if where != "local":
                sink(Event("pitr", f"{base.name}: read from location {where}"))
            return where, unpacked
        except IntegrityError as exc:
            failures.append(f"{where}: {exc}")
            sink(Event("pitr", f"{base.name} in {where} is damaged ({exc}); trying the next copy"))
            flusher.reset()
            clear(target_dir)
        finally:
            raw.close()
    raise IntegrityError(
        f"no good copy of base backup {base.name}: " + "; ".join(failures),
        hint="restore to a point after another base backup, or copy a good one back",
    )


class Flusher:
    """fsyncs the unpacked files on ``FLUSH_THREADS`` threads while unpacking goes on; the
    folders and the target folder once it ended (``finish``). ``owner``: the (uid, gid) new
    files and folders get, when the server runs as another OS user."""

    def __init__(self, folder: Path, run_as: str | None = None) -> None:
        self.folder = folder
        entry = pwd.getpwnam(run_as) if run_as else None
        self.owner = (entry.pw_uid, entry.pw_gid) if entry else None
        if self.owner is not None:
            os.chown(folder, *self.owner)
        self._pool = ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="safehold-flush")
        self._pending: list[Future[None]] = []
        self.folders: list[str] = []

    def file(self, path: str) -> None:
        self._pending.append(self._pool.submit(_fsync, path))

    def finish(self) -> None:
        """Wait until every file and folder written so far is on disk (raises an fsync error)."""
        for future in self._pending:
            future.result()
        done = [self._pool.submit(_fsync, folder) for folder in self.folders]
        for future in done:
            future.result()
        fsync_dir(self.folder)
        self._pending.clear()
        self._pool.shutdown()

    def close(self) -> None:
        self.reset()
        self._pool.shutdown()

    def reset(self) -> None:
        """Forget a failed attempt (its files are about to be removed)."""
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            with contextlib.suppress(Exception):
                future.result()
        self._pending.clear()
        self.folders.clear()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _from_file(path: Path, raw: IO[bytes], flusher: Flusher) -> tuple[str, int, Unpacked]:
    """A local, unencrypted base backup: ``zstd -d FILE`` unpacked here while a thread hashes
    the same file (``raw``, from the page cache); (sha256, size, unpacked)."""
    found: list[tuple[str, int]] = []
    hasher = threading.Thread(
        target=lambda: found.append(sha256_of(raw)), name="safehold-restore-hash", daemon=True
    )
    hasher.start()
    unpacked = _unzstd(path, flusher)
    hasher.join()
    if not found:
        raise IntegrityError(f"could not read {path} to check its sha256")
    return (*found[0], unpacked)


def _unzstd(compressed: Path | IO[bytes] | HashingReader, flusher: Flusher) -> Unpacked:
    """``compressed`` (a zstd file, or a stream already decrypted, fed on a thread) through
    ``zstd -d``, unpacked by this process: decompressing and writing run on both cores."""
    from_file = isinstance(compressed, Path)
    argv = ["zstd", "-d", "-c", "-q", *([str(compressed)] if from_file else [])]
    unzstd = _proc.spawn(argv, stdin=subprocess.DEVNULL if from_file else subprocess.PIPE)
    assert unzstd.stdout is not None and unzstd.stderr is not None
    tail = _proc.StderrTail(unzstd.stderr)
    feeding: list[BaseException] = []
    feeder = None
    if not isinstance(compressed, Path):
        feeder = threading.Thread(
            target=_feed, args=(compressed, unzstd, feeding), name="safehold-unzstd-feed"
        )
        feeder.start()
    unpack = _Unpack(flusher)
    try:
        unpack.run(unzstd.stdout.fileno())
    except BaseException:
        with contextlib.suppress(subprocess.TimeoutExpired):
            unzstd.wait(timeout=1)  # a truncated stream: zstd has failed, or is about to
        _proc.stop(unzstd)  # then returncode > 0 says the stream, not the tar, is damaged
        _stream_failed(feeder, feeding, max(unzstd.returncode or 0, 0), tail)
        raise
    _stream_failed(feeder, feeding, unzstd.wait(), tail)
    return unpack.result


def _stream_failed(
    feeder: threading.Thread | None, feeding: list[BaseException], code: int, tail: _proc.StderrTail
) -> None:
    """Raise what the feeding thread met (damaged encryption, a storage error), else a zstd
    failure."""
    if feeder is not None:
        feeder.join()
    if feeding:
        raise feeding[0]
    if code != 0:
        said = tail.text()[-600:]
        raise IntegrityError(f"the base backup's stream is damaged (zstd exit {code}): {said}")


def _feed(
    source: IO[bytes] | HashingReader, unzstd: subprocess.Popen[bytes], out: list[BaseException]
) -> None:
    assert unzstd.stdin is not None
    try:
        while chunk := source.read(CHUNK):
            unzstd.stdin.write(chunk)
        unzstd.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException as exc:
        out.append(exc)
        _proc.stop(unzstd)


class _Chunks:
    """The decompressed stream read on a thread into up to ``DEPTH`` buffers: zstd never waits
    while a file is created (through a 1 MiB pipe alone, the two took turns)."""

    Buffer = tuple[bytearray, memoryview]  # the bytes and a view of them

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._free: queue.SimpleQueue[_Chunks.Buffer | None] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[_Chunks.Buffer, int] | BaseException] = (
            queue.SimpleQueue()
        )
        for _ in range(DEPTH):
            buf = bytearray(CHUNK)
            self._free.put((buf, memoryview(buf)))
        self._thread = threading.Thread(target=self._run, name="safehold-unzstd-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (buffer := self._free.get()) is not None:
                count = os.readv(self._fd, [buffer[1]])
                self._full.put((buffer, count))
                if not count:
                    return
        except BaseException as exc:  # handed to the unpacking thread, which raises it
            self._full.put(exc)

    def next(self, done: Buffer | None) -> tuple[Buffer, int]:
        """The next buffer and its length (0 at the end); ``done`` goes back for reuse."""
        if done is not None:
            self._free.put(done)
        item = self._full.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._free.put(None)  # a reader waiting for a buffer stops; one in readv sees EOF


class _Unpack:
    """A pg_basebackup tar (plain ustar: regular files and folders only) read from a pipe and
    written below ``flusher.folder``; anything else in it is refused as damage."""

    def __init__(self, flusher: Flusher) -> None:
        self.flusher = flusher
        self.root = str(flusher.folder)
        self.result = Unpacked()
        self._chunks: _Chunks | None = None
        self._current: _Chunks.Buffer | None = None
        self._view = memoryview(b"")
        self._pos = self._end = 0
        self._times: list[tuple[str, int]] = []

    def _take(self, wanted: int) -> tuple[int, int]:
        """(offset in ``_view``, length) of up to ``wanted`` next bytes; length 0 at the end."""
        if self._pos == self._end:
            if self._current is not None and self._end == 0:
                return 0, 0  # the end was reached: the reading thread is gone
            assert self._chunks is not None
            self._current, self._end = self._chunks.next(self._current)
            self._pos, self._view = 0, self._current[1]
        count = min(wanted, self._end - self._pos)
        self._pos += count
        return self._pos - count, count

    def _exact(self, wanted: int) -> bytes:
        out = bytearray()
        while len(out) < wanted:
            offset, count = self._take(wanted - len(out))
            if not count:
                raise IntegrityError("the base backup's tar ends in the middle (truncated?)")
            out += self._view[offset : offset + count]
        return bytes(out)

    def run(self, fd: int) -> None:
        self._chunks = _Chunks(fd)
        try:
            self._run()
        finally:
            self._chunks.close()

    def _run(self) -> None:
        while True:
            header = self._exact(512)
            if not any(header):
                break  # end-of-archive blocks
            kind, name, size, mode, mtime = tar_header(header)
            path = os.path.join(self.root, name)
            if kind == "5":
                self._folder(path, mode, mtime)
            else:
                self._file(name, path, size, mode, mtime)
            self._exact(-size % 512)
        while self._take(CHUNK)[1]:
            pass  # the second zero block and padding: zstd must end cleanly too
        for path, mtime in reversed(self._times):  # after their content, as tar does
            os.utime(path, ns=(mtime, mtime))
        self.flusher.folders.extend(path for path, _ in self._times)

    def _folder(self, path: str, mode: int, mtime: int) -> None:
        try:
            os.mkdir(path, mode & 0o777)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise IntegrityError(f"the base backup's tar has {path!r} twice") from None
        else:
            if self.flusher.owner is not None:
                os.chown(path, *self.flusher.owner)
        self._times.append((path, mtime))

    def _file(self, name: str, path: str, size: int, mode: int, mtime: int) -> None:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise IntegrityError(f"the base backup's tar has {name!r} before its folder")
        try:
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o777)
        except FileExistsError:
            raise IntegrityError(f"the base backup's tar has {name!r} twice") from None
        try:
            if self.flusher.owner is not None:
                os.fchown(out, *self.flusher.owner)
            crc, left, flushed = 0, size, 0
            keep = bytearray() if name == MANIFEST else None
            while left:
                offset, count = self._take(min(left, CHUNK))
                if not count:
                    raise IntegrityError(f"the base backup's tar ends inside {name!r}")
                view = self._view[offset : offset + count]
                while view:
                    view = view[os.write(out, view) :]
                crc = crc32c_extend(crc, self._view[offset : offset + count])
                if keep is not None:
                    keep += self._view[offset : offset + count]
                left -= count
                if size - left - flushed >= FLUSH_STEP:
                    flushed = size - left
                    self.flusher.file(path)
            os.utime(out, ns=(mtime, mtime))
        finally:
            os.close(out)
        self.flusher.file(path)
        checksum = crc.to_bytes(4, "little").hex()
        self.result.files[name] = (size, checksum)
        if keep is not None:
            self.result.manifest = bytes(keep)
