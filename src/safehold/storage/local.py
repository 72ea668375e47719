"""A repository on local disk: temp file in the same folder, fsync, rename, fsync the folder.

Every resource fault while writing (a full or read-only disk, no permission, a path of the
wrong type such as a regular file or a dangling link where the folder should be) becomes a
``StorageError`` naming the path, what was being written and what to do; the temp file is
removed first, so nothing half-written is left."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import IO

from .. import _proc
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
            raise storage_error(exc, final, f"writing {final.name}") from exc

    @property
    def temp(self) -> Path:
        """The partial file being written (another program may write it: ``fileno``)."""
        return self._temp

    def fileno(self) -> int:
        assert self._fd is not None, "fileno after commit/abort"
        return self._fd

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
            raise storage_error(exc, self._final, f"writing {self._final.name}") from exc
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
            raise storage_error(exc, self._final, f"committing {self._final.name}") from exc
        except BaseException:  # a signal during the fsync: no temp file may outlive the run
            self.abort()
            raise

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
        doing = "creating the backup folder"
        if self.root.is_symlink() and not self.root.exists():
            raise _wrong_type(self.root, doing)  # mkdir would say only "File exists"
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.root, doing) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            if os.statvfs(self.root).f_flag & os.ST_RDONLY:
                raise storage_error(OSError(errno.EROFS, "read-only"), self.root, "writing")
            raise StorageError(
                f"backup folder {self.root} is not writable by this user",
                hint="fix its ownership/permissions or point BACKUP_DIR elsewhere",
            )

    def check_root(self, doing: str = "reading the backups") -> None:
        """Fail when ``root`` is there but is no folder (a file, a dangling link): a missing
        folder is an empty repository, a path of the wrong type is a mistake to report."""
        if (self.root.is_symlink() or self.root.exists()) and not self.root.is_dir():
            raise _wrong_type(self.root, doing)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def _parent(self, key: str) -> Path:
        target = self.path(key)
        try:
            self._make_folders(target.parent)
        except OSError as exc:
            raise storage_error(exc, target.parent, f"creating the folder for {key}") from exc
        return target

    def _make_folders(self, folder: Path) -> None:
        """``folder`` and the missing levels down from the root, each 0700: ``mkdir(parents=
        True)`` gives every level but the last the umask's mode (0755), readable by all."""
        missing: list[Path] = []
        while folder != self.root and folder != folder.parent and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for level in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it: fine
                level.mkdir(mode=DIR_MODE)

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self._parent(key))

    def open_reader(self, key: str) -> IO[bytes]:
        return self.path(key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def put_bytes(self, key: str, data: bytes) -> None:
        # Small records (manifests, journal entries): a signal waits until this one is
        # written or not, so none is left half-made by a run that stops cleanly.
        with _proc.shielded(), self.open_writer(key) as writer:
            writer.write(data)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def age(self, key: str) -> timedelta:
        """Since ``key`` was last written, by this host's clock (its file's mtime)."""
        return timedelta(seconds=max(0.0, time.time() - self.path(key).stat().st_mtime))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass  # idempotent: already gone
        except OSError as exc:
            raise storage_error(exc, self.path(key), f"removing {key}") from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        folder = self.path(prefix) if prefix else self.root
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
        except FileNotFoundError:
            self.check_root("listing the backups")
            return []  # nothing written yet (a new host): no backups
        except OSError as exc:
            raise storage_error(exc, folder, "listing the backups") from exc
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        return [base + name for name in names]

    def local_path(self, key: str) -> Path:
        return self.path(key)

    def link(self, link_key: str, target_key: str) -> None:
        """Point ``link_key`` at ``target_key`` with a relative symlink, replaced atomically."""
        link = self.path(link_key)
        temp = link.with_name(f".{link.name}{PARTIAL_MARK}{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            os.symlink(os.path.relpath(self.path(target_key), link.parent), temp)
            os.replace(temp, link)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise storage_error(exc, link, f"pointing {link_key} at {target_key}") from exc

    def remove_stale_partials(self, prefix: str = "") -> builtins.list[str]:
        """Remove temp files left by processes that no longer run (a kill -9 mid-backup), in
        the repository's folder or the one ``prefix`` names (``.safehold/manifests``...)."""
        folder = self.path(prefix) if prefix else self.root
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        removed = []
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            if PARTIAL_MARK not in entry.name or not entry.name.startswith("."):
                continue
            pid_text = entry.name.rsplit(PARTIAL_MARK, 1)[1].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(base + entry.name)
        return removed

    def remove_partials_of(self, key: str, pid: int) -> builtins.list[str]:
        """Remove the temp files the process ``pid`` left while it wrote ``key`` (the caller
        knows it no longer runs: it was journalled, and the journal saw it die)."""
        final = self.path(key)
        prefix = f".{final.name}{PARTIAL_MARK}{pid}-"
        removed = []
        try:
            names = [e.name for e in os.scandir(final.parent) if e.name.startswith(prefix)]
        except FileNotFoundError:
            return []
        for name in names:
            try:
                os.unlink(final.parent / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(exc, final.parent / name, f"removing {name}") from exc
            removed.append(name)
        return removed


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, where: Path, doing: str) -> StorageError:
    """The one mapping of an ``OSError`` at ``where`` (while ``doing``: what was being written)
    to an error an operator can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"no space left on the device holding {where} ({doing})",
            hint="free space or move BACKUP_DIR to a larger disk; the partial file was removed",
        )
    if exc.errno == errno.EROFS:
        return StorageError(
            f"{where} is on a read-only file system ({doing})",
            hint="remount it read-write, or point BACKUP_DIR at a writable folder",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"permission denied at {where} ({doing})",
            hint="fix its ownership/permissions or point BACKUP_DIR elsewhere",
        )
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENOENT):
        return _wrong_type(where, doing)
    return StorageError(
        f"cannot write {where} ({doing}): {exc.strerror or exc}",
        hint="check the disk and the folder (dmesg, df); the partial file was removed",
    )


def _wrong_type(where: Path, doing: str) -> StorageError:
    """A path component that is not the folder it must be: named, with what it is instead."""
    for part in [*reversed(where.parents), where]:
        if part.is_symlink() and not part.exists():
            what = f"a symbolic link to {os.readlink(part)}, which does not exist"
        elif part.exists() and not part.is_dir():
            what = "a regular file" if part.is_file() else "not a folder"
        else:
            continue
        return StorageError(
            f"{part} is {what}, where a folder is needed ({doing})",
            hint="create the folder it points to, or point BACKUP_DIR at a folder"
            if part.is_symlink()
            else "move that file away, or point BACKUP_DIR at a folder",
        )
    kind = "a folder" if where.is_dir() else "missing"
    return StorageError(
        f"{where} is {kind} ({doing})",
        hint="move it out of the way, or point BACKUP_DIR at another folder",
    )
