"""One lock per repository: shared for readers (restore, list), exclusive for writers (backup).
And one per volume (or restored folder): exclusive for a restore of it, shared for a backup of
it, so two restores of one volume never interleave and a backup never reads a swap half-done.

Each is an ``flock`` (``.safehold/lock``, ``.safehold/locks/<key>.lock``), so the kernel frees it
the moment a holder dies, even by ``kill -9``: a dead process can never block later runs. An
exclusive holder writes its pid there, so a later run can tell a live holder (wait, then fail
clearly) from one that died (say so, go on). Order: a volume's lock before the repository's,
never the other way, so two runs cannot each hold what the other waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import naming
from ._proc import pid_alive
from .errors import LockBusy
from .naming import LOCK_FILE
from .storage.local import DIR_MODE, FILE_MODE

POLL_S = 0.2


@dataclass(frozen=True)
class LockInfo:
    """What the lock file said when we took the lock: a dead holder means a stale lock."""

    previous: dict[str, Any] | None

    @property
    def stale_pid(self) -> int | None:
        if not self.previous or self.previous.get("host") != socket.gethostname():
            return None
        pid = self.previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
            return pid
        return None


LOCKS_DIR = naming.LOCKS_DIR


def repository_lock(
    root: Path, *, exclusive: bool, timeout: float, purpose: str
) -> contextlib.AbstractContextManager[LockInfo]:
    return _flocked(root / LOCK_FILE, exclusive, timeout, purpose, f"the repository {root}")


def volume_lock(
    root: Path, key: str, *, exclusive: bool, timeout: float, purpose: str
) -> contextlib.AbstractContextManager[LockInfo]:
    """The lock of one volume or folder (``volume_key``/``folder_key``) in the repository
    ``root``: exclusive while it is restored, shared while it is backed up."""
    what = key.replace("-", " ", 1) if key.startswith("volume-") else f"the folder ({key})"
    return _flocked(root / LOCKS_DIR / f"{key}.lock", exclusive, timeout, purpose, what)


def volume_key(name: str) -> str:
    return f"volume-{name}"  # Docker volume names are already safe as file names


def folder_key(folder: Path) -> str:
    """A folder is known by its real path, whatever name the caller gives its backups."""
    real = os.path.realpath(folder)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    return f"folder-{Path(real).name[:40]}-{digest}"


@contextlib.contextmanager
def _flocked(
    path: Path, exclusive: bool, timeout: float, purpose: str, what: str
) -> Iterator[LockInfo]:
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        _acquire(fd, exclusive, timeout, what)
        info = LockInfo(_read(fd))
        if exclusive:
            _write(fd, purpose)
        try:
            yield info
        finally:
            if exclusive:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, exclusive: bool, timeout: float, what: str) -> None:
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _read(fd) or {}
                who = (
                    f"pid {holder.get('pid')} ({holder.get('purpose')}) since {holder.get('since')}"
                    if holder
                    else "another safehold run (a backup or a reader holds it shared)"
                )
                raise LockBusy(
                    f"{what} is locked by {who}",
                    hint=f"wait for it to finish, or allow a longer wait with --lock-timeout "
                    f"(waited {timeout:.0f}s)",
                ) from None
            time.sleep(POLL_S)


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _write(fd: int, purpose: str) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
