"""A repository on local disk: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import IO

from .._proc import pid_alive
from ..errors import StorageError, StorageFull

FILE_MODE = 0o600
DIR_MODE = 0o700
PARTIAL_MARK = ".partial-"


class LocalWriter:
    def __init__(self, final: Path) -> None:
        self._final = final
        self._temp = final.with_name(
            f".{final.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(self._temp, flags, FILE_MODE)
        except OSError as exc:
            raise _storage_error(exc, final.parent) from exc

    def write(self, data: bytes | memoryview) -> int:
        assert self._fd is not None, "write after commit/abort"
        view = memoryview(data)
        total = len(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, self._final.parent) from exc
        return total

    def commit(self) -> None:
        assert self._fd is not None, "commit after commit/abort"
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self._temp, self._final)
            fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, self._final.parent) from exc

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._fd is not None:
            self.commit()
        else:
            self.abort()


class LocalStorage:
    """Keys are '/'-separated paths below ``root``; folders are created 0700, files 0600."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def description(self) -> str:
        return str(self.root)

    def ensure(self) -> None:
        """Create the repository folder (0700) or fail clearly when it cannot be written."""
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, self.root) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(
                f"backup folder {self.root} is not writable by this user",
                hint="fix its ownership/permissions or point BACKUP_DIR elsewhere",
            )

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def _parent(self, key: str) -> Path:
        target = self.path(key)
        try:
            target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, target.parent) from exc
        return target

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self._parent(key))

    def open_reader(self, key: str) -> IO[bytes]:
        return self.path(key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_writer(key) as writer:
            writer.write(data)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def list(self, prefix: str = "") -> builtins.list[str]:
        folder = self.path(prefix) if prefix else self.root
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
        except FileNotFoundError:
            return []
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        return [base + name for name in names]

    def local_path(self, key: str) -> Path:
        return self.path(key)

    def link(self, link_key: str, target_key: str) -> None:
        """Point ``link_key`` at ``target_key`` with a relative symlink, replaced atomically."""
        link = self.path(link_key)
        temp = link.with_name(f".{link.name}{PARTIAL_MARK}{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(os.path.relpath(self.path(target_key), link.parent), temp)
        os.replace(temp, link)

    def remove_stale_partials(self) -> builtins.list[str]:
        """Remove temp files left by processes that no longer run (a kill -9 mid-backup)."""
        removed = []
        for entry in os.scandir(self.root):
            if PARTIAL_MARK not in entry.name or not entry.name.startswith("."):
                continue
            pid_text = entry.name.rsplit(PARTIAL_MARK, 1)[1].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(entry.name)
        return removed


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, where: Path) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"no space left on the device holding {where}",
            hint="free space or move BACKUP_DIR to a larger disk; the partial file was removed",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"cannot write to {where}: {exc.strerror}",
            hint="fix its ownership/permissions or point BACKUP_DIR elsewhere",
        )
    return StorageError(f"storage error at {where}: {exc.strerror or exc}")
