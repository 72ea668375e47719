"""Shared and exclusive locks: backups share the store, prune has it alone.

A lock is an object ``chunks/locks/<32hex>`` holding plain JSON (kind, host, pid, time,
refreshed, ttl). Objects are never rewritten: a refresh (every ttl/4) writes a new object and
then deletes the previous one. Taking a lock writes it first and then lists the others, so of
two that race at least one sees the other: a backup (shared) refuses while a fresh exclusive
lock exists; prune (exclusive) refuses while any other fresh lock exists. Both remove their own
record before refusing, and with ``wait`` try again (after a random pause, so two waiters do not
keep meeting) until it has passed: a nightly backup waits for a prune instead of failing.

A lock is stale once its holder's ttl passed without a refresh, measured by the storage's
clock where it has one (``objtime``), else by the record's own time; at once when its holder
ran here (same host, boot and pid namespace) and that process is gone (a kill -9). A holder
that could not refresh for a whole ttl has *lost* its lock (``check`` raises): it must not
commit, since prune may have run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from .._proc import pid_alive
from ..errors import LockBusy, SafeholdError
from ..model import parse_time
from ..storage.base import Storage
from .layout import LOCKS, basename, is_name, lock_key, new_name
from .objtime import object_age

DEFAULT_TTL = timedelta(minutes=30)
Kind = Literal["shared", "exclusive"]


@dataclass(frozen=True)
class LockRecord:
    name: str
    kind: str
    host: str
    pid: int
    time: datetime
    refreshed: datetime
    ttl: timedelta
    age: timedelta  # since the last refresh, by the storage's clock when known

    node: str = ""  # where ``pid`` means something: host, boot and pid namespace

    def stale(self) -> bool:
        if self.node and self.node == node() and not pid_alive(self.pid):
            return True
        return self.age > self.ttl

    def describe(self) -> str:
        since = f"{self.time:%Y-%m-%d %H:%M:%S} UTC"
        ago = int(self.age.total_seconds())
        holder = f"pid {self.pid} on {self.host}"
        return f"{self.kind} lock of {holder} (since {since}, refreshed {ago} s ago)"


def _clock() -> float:
    """Seconds that keep counting while the host is suspended (unlike ``time.monotonic``)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def node() -> str:
    """This process's place: a pid is only checked where it was taken (same host name, same
    boot, same pid namespace), never across containers or machines that share a name."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts) if len(parts) == 3 else ""


def _record(kind: str, since: datetime, ttl: timedelta) -> bytes:
    now = datetime.now(UTC)
    data = {
        "kind": kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "node": node(),
        "time": since.isoformat(timespec="seconds"),
        "refreshed": now.isoformat(timespec="seconds"),
        "ttl": ttl.total_seconds(),
    }
    return json.dumps(data).encode()


def read_locks(storage: Storage) -> list[LockRecord]:
    """Every lock in the store; unreadable records count as exclusive and fresh until old."""
    found = []
    for key in storage.list(LOCKS):
        name = basename(key)
        if not is_name(name):
            continue
        try:
            raw = storage.read_bytes(key)
            age = object_age(storage, key)
        except FileNotFoundError:
            continue  # released (or refreshed) since the listing
        found.append(_parse(name, raw, age))
    return found


def _parse(name: str, raw: bytes, age: timedelta | None) -> LockRecord:
    now = datetime.now(UTC)
    try:
        data: dict[str, Any] = json.loads(raw)
        refreshed = parse_time(str(data["refreshed"]))
        return LockRecord(
            name=name,
            kind=str(data["kind"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            time=parse_time(str(data["time"])),
            refreshed=refreshed,
            ttl=timedelta(seconds=float(data.get("ttl", DEFAULT_TTL.total_seconds()))),
            age=age if age is not None else max(timedelta(0), now - refreshed),
            node=str(data.get("node", "")),
        )
    except (ValueError, TypeError, KeyError):
        return LockRecord(name, "exclusive", "?", -1, now, now, DEFAULT_TTL, age or timedelta(0))


class StoreLock:
    """One lock held by this process; ``with StoreLock(storage, "shared"):``."""

    def __init__(
        self, storage: Storage, kind: Kind, ttl: timedelta = DEFAULT_TTL, wait: float = 0.0
    ) -> None:
        self.storage = storage
        self.kind = kind
        self.ttl = ttl
        self.wait = wait  # seconds to keep trying while a conflicting lock is held
        self.since = datetime.now(UTC)
        self.name: str | None = None
        self.removed_stale: list[str] = []
        self._last_ok = 0.0
        self._lost = False
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self) -> StoreLock:
        """Take the lock; while a conflicting one is held, retry (own record removed between
        tries, so two waiters never block each other for good) until ``wait`` has passed."""
        deadline = _clock() + self.wait
        while True:
            self.name = self._write()
            self._last_ok = _clock()
            try:
                self._check_others()
                break
            except LockBusy:
                self._drop()
                if _clock() >= deadline:
                    raise
            except BaseException:
                self._drop()
                raise
            pause = 0.5 + secrets.randbelow(1500) / 1000  # apart, so two waiters do not meet
            time.sleep(min(pause, max(deadline - _clock(), 0.0)))
        self._thread = threading.Thread(
            target=self._refresh_loop, name="safehold-chunkstore-lock", daemon=True
        )
        self._thread.start()
        return self

    def _write(self) -> str:
        name = new_name()
        self.storage.put_bytes(lock_key(name), _record(self.kind, self.since, self.ttl))
        return name

    def _check_others(self) -> None:
        for other in read_locks(self.storage):
            if other.name == self.name:
                continue
            if other.stale():
                if self.kind == "exclusive":  # prune clears what dead writers left
                    self.storage.delete(lock_key(other.name))
                    self.removed_stale.append(other.name)
                continue
            if self.kind == "exclusive" or other.kind == "exclusive":
                doing = "prune" if self.kind == "exclusive" else "back up"
                raise LockBusy(
                    f"cannot {doing}: the chunk store holds a {other.describe()}",
                    hint="wait for it to finish; a lock of a process that died is stale after "
                    f"{int(other.ttl.total_seconds())} s without refresh",
                )

    def _refresh_loop(self) -> None:
        period = max(self.ttl.total_seconds() / 4, 0.05)
        while not self._stop.wait(period):
            with contextlib.suppress(SafeholdError, OSError):
                self.refresh()

    def refresh(self) -> None:
        with self._guard:
            if self.name is None:
                return
            new = self._write()
            old, self.name = self.name, new
            now = _clock()
            # A gap longer than the ttl (a suspended host, an unreachable storage) let the
            # lock look stale to others: a prune may have run, whatever happens next.
            self._lost = self._lost or now - self._last_ok > self.ttl.total_seconds()
            self._last_ok = now
            self.storage.delete(lock_key(old))

    def check(self) -> None:
        """Raise when the lock may have been lost (no refresh for a whole ttl)."""
        if self._lost or _clock() - self._last_ok > self.ttl.total_seconds():
            raise LockBusy(
                "the chunk store lock was not refreshed for a whole ttl: it may be lost",
                hint="nothing was committed; run the backup again (check the storage's "
                "reachability)",
            )

    def _drop(self) -> None:
        name, self.name = self.name, None
        if name is not None:
            with contextlib.suppress(SafeholdError, OSError):
                self.storage.delete(lock_key(name))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._guard:
            name, self.name = self.name, None
        if name is not None:
            with contextlib.suppress(SafeholdError, OSError):
                self.storage.delete(lock_key(name))

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()
