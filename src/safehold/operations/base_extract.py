"""Unpacking a base backup into a data folder: from the first place with a good copy, through
sha256 and age into ``zstd -d | tar -x``, flushed to disk while it is written."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import IO

from .. import _proc
from ..crypto import age_reader
from ..errors import IntegrityError
from ..model import Event, EventSink
from ..storage import LocalStorage
from ..storage.local import fsync_dir
from . import wal
from ._pipeline import HashingReader, check_digest, sha256_of, unlock_key
from .pitr import BaseBackup

FLUSH_EVERY_S = 0.25
_TAR = ["tar", "-x", "-f", "-", "--no-same-owner", "-C"]


def clear(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def extract(archive: wal.WalArchive, base: BaseBackup, flusher: Flusher, sink: EventSink) -> str:
    """Unpack ``base`` into ``flusher.folder`` from the first place with a good copy; returns
    that place's name. The caller runs ``flusher.sync()`` once for the last writes."""
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
                digest, size = _untar_file(storage.path(base.data_key), raw, flusher)
            else:
                source = HashingReader(raw)
                plain: IO[bytes] | HashingReader = source
                if base.encryption is not None:
                    plain = age_reader(source, unlock_key(storage, archive.decryption, base.name))
                with flusher:
                    _untar(plain, target_dir)
                source.drain()
                digest, size = source.hexdigest(), source.size
            check_digest(base.name, base.sha256, digest, base.size, size)
            if where != "local":
                sink(Event("pitr", f"{base.name}: read from location {where}"))
            return where
        except IntegrityError as exc:
            failures.append(f"{where}: {exc}")
            sink(Event("pitr", f"{base.name} in {where} is damaged ({exc}); trying the next copy"))
            clear(target_dir)
        finally:
            raw.close()
    raise IntegrityError(
        f"no good copy of base backup {base.name}: " + "; ".join(failures),
        hint="restore to a point after another base backup, or copy a good one back",
    )


class Flusher:
    """Writes the extracted files to disk while extraction goes on: every ``FLUSH_EVERY_S`` it
    fsyncs the files that are new or grew since their last fsync. The server syncs its whole
    data folder before recovery anyway; flushing 1 GB only then takes seconds during which
    nothing else happens, while here the disk writes overlap with decompression (as a restore
    writing each file synchronously would). Only these files: ``sync -f`` would also flush
    whatever else is dirty on the filesystem."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._synced: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Flusher:  # once per place tried: a new thread each time
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="safehold-flush", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_S):
            self.sync(folders=False)

    def sync(self, *, folders: bool = True) -> None:
        """fsync what changed since the last pass; with ``folders`` the directories too (the
        last pass, once extraction ended)."""
        for root, dirs, files in os.walk(self.folder):
            for name in files + (dirs if folders else []):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):  # gone, or a special file: nothing to keep
                    info = os.lstat(path)
                    if stat.S_ISLNK(info.st_mode) or self._synced.get(path) == info.st_size:
                        continue
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    if stat.S_ISREG(info.st_mode):
                        self._synced[path] = info.st_size
        if folders:
            fsync_dir(self.folder)


def _untar_file(path: Path, raw: IO[bytes], flusher: Flusher) -> tuple[str, int]:
    """A local, unencrypted base backup: ``zstd -d FILE | tar -x`` while a thread hashes the
    same file (``raw``, from the page cache); (sha256, size). Keeping Python out of the data
    path saves a second of a 1 GB restore here."""
    found: list[tuple[str, int]] = []
    hasher = threading.Thread(
        target=lambda: found.append(sha256_of(raw)), name="safehold-restore-hash", daemon=True
    )
    hasher.start()
    with flusher:
        _untar(path, flusher.folder)
    hasher.join()
    if not found:
        raise IntegrityError(f"could not read {path} to check its sha256")
    return found[0]


def _untar(compressed: Path | IO[bytes] | HashingReader, target_dir: Path) -> None:
    """``compressed`` (a zstd file, or a stream already decrypted) through ``zstd -d`` into
    ``tar -x``: separate processes, so reading, decompressing and writing files overlap."""
    from_file = isinstance(compressed, Path)
    argv = ["zstd", "-d", "-c", "-q", *([str(compressed)] if from_file else [])]
    unzstd = _proc.spawn(argv, stdin=subprocess.DEVNULL if from_file else subprocess.PIPE)
    untar = _proc.spawn([*_TAR, str(target_dir)], stdin=unzstd.stdout, stdout=subprocess.DEVNULL)
    assert unzstd.stdout is not None and unzstd.stderr is not None and untar.stderr is not None
    unzstd.stdout.close()  # tar holds it now: zstd sees a broken pipe if tar dies
    tails = (_proc.StderrTail(unzstd.stderr), _proc.StderrTail(untar.stderr))
    if not isinstance(compressed, Path):
        assert unzstd.stdin is not None
        try:
            while chunk := compressed.read(1 << 20):
                unzstd.stdin.write(chunk)
            unzstd.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            _proc.stop(unzstd)
            _proc.stop(untar)
            raise
    codes = (unzstd.wait(), untar.wait())
    if codes != (0, 0):
        said = "; ".join(t.text()[-600:] for t in tails if t.text())
        raise IntegrityError(f"the base backup's stream is damaged (zstd/tar exit {codes}): {said}")
