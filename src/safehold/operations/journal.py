"""What a run may leave behind, recorded before it exists, and finished by the next run.

A restore creates things that must not outlive it: a staging database, a staging folder beside
a volume, a live database closed to connections for the swap, containers stopped for the
copy, a volume half-way through a swap. Each is written down here *before* it is created
(``record``: one small JSON file under ``.safehold/journal/``, written atomically and fsynced)
and crossed out once it is gone or committed (``done``). A run killed in between (SIGKILL,
power loss) leaves its entries behind, with the pid, start time and host of the process that
wrote them.

Every command that touches the repository first calls ``recover``: entries whose writer is no
longer running (pid gone, or reused by another process since) are handed to the resolver
registered for their kind, which finishes or rolls back what was interrupted and says what it
did; the entry is then removed. An entry of a process that is still running is left alone (a
second operator's run in progress), and so is one written on another host. A resolver that
fails leaves its entry for the next run and reports why: recovery never stops the command that
found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import naming
from .._proc import pid_alive
from ..errors import SafeholdError
from ..model import Event, EventSink, null_sink, parse_time
from ..storage import LocalStorage

JOURNAL_DIR = naming.JOURNAL_DIR


@dataclass(frozen=True)
class Entry:
    """One thing a run created (or is about to create) that must not outlive it."""

    kind: str  # a registered resolver's name: "staging_database", "stopped_containers", ...
    data: dict[str, Any]
    purpose: str  # the command that wrote it, for messages ("safehold restore")
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=lambda: process_start(os.getpid()))
    host: str = field(default_factory=socket.gethostname)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return f"{JOURNAL_DIR}/{self.kind}-{self.id}.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "data": self.data,
            "purpose": self.purpose,
            "id": self.id,
            "pid": self.pid,
            "started": self.started,
            "host": self.host,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Entry:
        return cls(
            kind=str(raw["kind"]),
            data=dict(raw["data"]),
            purpose=str(raw.get("purpose", "")),
            id=str(raw["id"]),
            pid=int(raw["pid"]),
            started=str(raw.get("started", "")),
            host=str(raw.get("host", "")),
            created_at=parse_time(str(raw["created_at"])),
        )

    def writer_alive(self) -> bool:
        """Whether the process that wrote this entry still runs (another host: assume so)."""
        if self.host != socket.gethostname():
            return True
        return pid_alive(self.pid) and process_start(self.pid) == self.started


Resolver = Callable[[Entry, "Context"], str]
_RESOLVERS: dict[str, Resolver] = {}
_LAST: set[str] = set()  # kinds resolved after all others


@dataclass
class Context:
    """What resolvers may need, built lazily: most recoveries need none of it."""

    storage: LocalStorage
    services: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _made: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name not in self._made:
            if name not in self.services:
                raise SafeholdError(f"recovery needs {name}, which this command does not have")
            self._made[name] = self.services[name]()
        return self._made[name]


def resolver(kind: str, *, last: bool = False) -> Callable[[Resolver], Resolver]:
    """Register how an interrupted ``kind`` is finished or rolled back. The function gets the
    entry and the context, does the work idempotently and returns one line saying what it did.
    ``last``: resolved after every other kind (containers start only once the volumes and
    databases they use are settled)."""

    def register(func: Resolver) -> Resolver:
        _RESOLVERS[kind] = func
        if last:
            _LAST.add(kind)
        return func

    return register


def record(storage: LocalStorage, kind: str, data: dict[str, Any], purpose: str) -> Entry:
    """Write the entry down (durably) before the thing it names is created."""
    entry = Entry(kind, data, purpose)
    body = json.dumps(entry.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(entry.key, body)
    return entry


def done(storage: LocalStorage, entry: Entry) -> None:
    """Cross the entry out: what it named is gone, or committed."""
    with contextlib.suppress(FileNotFoundError):
        storage.delete(entry.key)


@contextlib.contextmanager
def recorded(
    storage: LocalStorage, kind: str, data: dict[str, Any], purpose: str
) -> Iterator[Entry]:
    """``record`` before the block, ``done`` after it, whether it succeeded or raised: the
    block itself cleans up what it made on an error it sees; the entry covers only a kill."""
    entry = record(storage, kind, data, purpose)
    try:
        yield entry
    finally:
        done(storage, entry)


def entries(storage: LocalStorage) -> list[Entry]:
    found: list[Entry] = []
    if not storage.path(JOURNAL_DIR).is_dir():
        return found
    for key in storage.list(JOURNAL_DIR):
        if not key.endswith(".json"):
            continue
        try:
            found.append(Entry.from_json(json.loads(storage.read_bytes(key))))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a torn write of an entry that never got to matter: the writer died first
    found.sort(key=lambda e: e.created_at)
    return found


def interrupted(storage: LocalStorage) -> list[Entry]:
    """The entries whose writer is gone: what the next run must finish or roll back."""
    return [entry for entry in entries(storage) if not entry.writer_alive()]


def recover(context: Context, sink: EventSink = null_sink, kinds: set[str] | None = None) -> int:
    """Finish or roll back what interrupted runs left behind; returns how many were resolved.
    Never raises for a resolver's failure: the entry stays and the failure is reported."""
    resolved = 0
    # An entry torn by a kill while it was written named nothing yet: record() comes first.
    for torn in context.storage.remove_stale_partials(JOURNAL_DIR):
        sink(Event("recover", f"removed {torn}: a journal entry a killed run was writing, "
                   "before it made anything", "warning"))  # fmt: skip
    pending = sorted(interrupted(context.storage), key=lambda entry: entry.kind in _LAST)
    for entry in pending:
        if kinds is not None and entry.kind not in kinds:
            continue
        handler = _RESOLVERS.get(entry.kind)
        if handler is None:
            continue  # written by a newer safehold, or its module is not loaded by this command
        when = entry.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        about = f"an interrupted {entry.purpose or 'run'} (pid {entry.pid}, {when})"
        try:
            said = handler(entry, context)
        except SafeholdError as exc:
            sink(Event("recover", f"{about}: {exc.message}; will try again", "warning"))
            continue
        done(context.storage, entry)
        resolved += 1
        sink(Event("recover", f"{about}: {said}", "warning", {"kind": entry.kind}))
    return resolved


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the
    pid, it tells a live writer from an unrelated process that got the same pid later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]
