"""One lock per repository: shared for readers (restore, list), exclusive for writers (backup).

It is an ``flock`` on ``.safehold/lock``, so the kernel frees it the moment a holder dies, even
by ``kill -9``: a dead process can never block later runs. The holder writes its pid there, so a
later run can tell a live holder (wait, then fail clearly) from one that died (say so, go on).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def repository_lock(
    root: Path, *, exclusive: bool, timeout: float, purpose: str
) -> Iterator[LockInfo]:
    path = root / LOCK_FILE
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        _acquire(fd, exclusive, timeout, path)
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


def _acquire(fd: int, exclusive: bool, timeout: float, path: Path) -> None:
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
                    else "another safehold run"
                )
                raise LockBusy(
                    f"the repository {path.parent.parent} is locked by {who}",
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
