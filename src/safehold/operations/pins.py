"""Pins: a record ``.safehold/pins/<artifact>.json`` that keeps a backup from prune, for good
(``safehold pin``) or until a moment (``--keep-until``, e.g. the backup taken before
maintenance: kept through it, then retention decides as for any other). Plus the small
repository helpers prune shares with them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import catalog, naming
from ..errors import StorageError, UsageError
from ..model import Event, EventSink, null_sink, parse_time
from ..storage import LocalStorage, Storage
from ._pipeline import repository_session

PINS_DIR = naming.PINS_DIR


def pin_key(artifact: str) -> str:
    return f"{PINS_DIR}/{artifact}.json"


@dataclass(frozen=True)
class Pin:
    artifact: str
    pinned_at: datetime
    by: str = ""
    note: str = ""
    until: datetime | None = None  # None: for good

    def to_json(self) -> dict[str, Any]:
        data = {"artifact": self.artifact, "pinned_at": _stamp(self.pinned_at), "by": self.by}
        return {**data, "note": self.note, "until": _stamp(self.until) if self.until else None}

    def holds(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def read_pins(storage: Storage) -> dict[str, Pin]:
    """Every pin by artifact name. An unreadable pin record still pins: when in doubt, keep."""
    pins: dict[str, Pin] = {}
    for key in records(storage, PINS_DIR):
        artifact = naming.artifact_of(key)
        try:
            data = json.loads(storage.read_bytes(key))
            at = parse_time(str(data["pinned_at"]))
            until = parse_time(str(data["until"])) if data.get("until") else None
            by, note = str(data.get("by", "")), str(data.get("note", ""))
            pins[artifact] = Pin(artifact, at, by, note, until)
        except (ValueError, KeyError, TypeError, AttributeError):
            pins[artifact] = Pin(artifact, datetime.fromtimestamp(0, UTC), note="(unreadable)")
        except FileNotFoundError:
            continue
    return pins


def pin(
    storage: LocalStorage,
    name: str,
    *,
    note: str = "",
    until: datetime | None = None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> Pin:
    """Pin a backup: prune never removes it (before ``until``, when given). Taken under the
    exclusive lock, so a prune that is running finishes first and the next one sees the pin."""
    (made,) = pin_all(storage, [name], note=note, until=until, lock_timeout=lock_timeout, sink=sink)
    return made


def pin_all(
    storage: LocalStorage,
    names: list[str],
    *,
    note: str = "",
    until: datetime | None = None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> list[Pin]:
    """``pin`` for several backups (a set's members) under one lock."""
    require_repository(storage)
    if until is not None and until.tzinfo is None:
        raise ValueError("a pin's end needs a timezone")
    made: list[Pin] = []
    with repository_session(storage, lock_timeout=lock_timeout, purpose="safehold pin", sink=sink):
        present = {r.name for r in catalog.scan(storage)}
        for name in names:
            artifact = _backup_name(storage, name)
            if artifact not in present:
                raise UsageError(
                    f"no backup named {name!r} in {storage.description}",
                    hint="'safehold list' shows the backups",
                )
            record = Pin(artifact, datetime.now(UTC), _who(), note, until)
            body = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
            storage.put_bytes(pin_key(artifact), body)
            made.append(record)
    how = f"prune keeps it until {_stamp(until)}" if until else "prune never removes it"
    for record in made:
        message = f"pinned {record.artifact}: {how}"
        sink(Event("pin", message, data=record.to_json()))
    return made


def unpin(
    storage: LocalStorage, name: str, *, lock_timeout: float = 300.0, sink: EventSink = null_sink
) -> bool:
    """Remove a pin; ``False`` when the backup exists but was not pinned."""
    require_repository(storage)
    with repository_session(
        storage, lock_timeout=lock_timeout, purpose="safehold unpin", sink=sink
    ):
        artifact = _backup_name(storage, name)
        pinned = storage.exists(pin_key(artifact))
        if not pinned and artifact not in {r.name for r in catalog.scan(storage)}:
            raise UsageError(
                f"no backup or pin named {name!r} in {storage.description}",
                hint="'safehold pin' lists the pins",
            )
        delete(storage, pin_key(artifact))
    message = f"unpinned {artifact}" if pinned else f"{artifact} was not pinned"
    sink(Event("pin", message, data={"artifact": artifact, "was_pinned": pinned}))
    return pinned


def _backup_name(storage: LocalStorage, ref: str) -> str:
    """A backup name, a ``latest`` link name (the backup it points at), or a path to either
    inside the repository."""
    root = storage.root.resolve()
    given = Path(ref)
    if given.name != ref and given.parent.resolve() != root:
        raise UsageError(f"{ref} is not in the repository {storage.root}")
    path = storage.root / given.name
    if path.is_symlink() and path.resolve().parent == root:
        return path.resolve().name
    return given.name


def _who() -> str:
    user = str(os.getuid())
    with contextlib.suppress(OSError, KeyError):
        user = getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


# --- helpers prune shares ---------------------------------------------------------------------


def require_repository(storage: LocalStorage) -> None:
    if not storage.root.is_dir():
        raise UsageError(
            f"there is no backup repository at {storage.root}",
            hint="set BACKUP_DIR or --backup-dir to the folder holding the backups",
        )


def delete(storage: Storage, key: str) -> None:
    try:
        storage.delete(key)
    except OSError as exc:
        raise StorageError(
            f"cannot remove {key} from {storage.description}: {exc.strerror or exc}",
            hint="fix the repository's permissions and run 'safehold prune' again; it "
            "finishes what this run started",
        ) from exc


def records(storage: Storage, folder: str) -> list[str]:
    """The ``<artifact>.json`` records of a folder (never another writer's temp files)."""
    return [
        key
        for key in storage.list(folder)
        if key.endswith(".json") and not key.rsplit("/", 1)[-1].startswith(".")
    ]
