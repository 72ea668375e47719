"""Pins: snapshots prune keeps, for good or until a date (``chunks/pins/``).

A pin is an object of its own, ``<snapshot-id>.<16hex>``, sealed with the meta key (the backup
host pins and reads pins; the bucket alone cannot forge one). Objects are never rewritten: a
new pin of the same snapshot is another object (the longest wins), and unpinning deletes them
all, so an Object Lock bucket holds pins as it holds the rest. Pins travel with the store's
other objects (``mirror``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from ..errors import IntegrityError, SafeholdError, UsageError
from ..model import parse_time
from ..storage.base import Storage
from .layout import PINS, basename, is_snapshot_id, snapshot_key
from .sealed import seal, unseal


@dataclass(frozen=True)
class Pin:
    snapshot: str
    until: datetime | None  # None: for good
    note: str
    at: datetime

    def holds(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def pin_keys(storage: Storage, snapshot_id: str | None = None) -> list[str]:
    keys = [k for k in storage.list(PINS) if is_snapshot_id(basename(k).split(".")[0])]
    return [k for k in keys if snapshot_id is None or basename(k).split(".")[0] == snapshot_id]


def pin(
    storage: Storage, meta_key: bytes, snapshot_id: str, until: datetime | None, note: str
) -> Pin:
    if not storage.exists(snapshot_key(snapshot_id)):
        raise UsageError(
            f"no snapshot {snapshot_id!r} in this chunk store",
            hint="'safehold snapshots list' shows them",
        )
    made = Pin(snapshot_id, until, note, datetime.now().astimezone())
    key = f"{PINS}/{snapshot_id}.{secrets.token_hex(8)}"
    value = {
        "snapshot": snapshot_id,
        "until": until.isoformat() if until else None,
        "note": note,
        "at": made.at.isoformat(),
    }
    storage.put_bytes(key, seal(meta_key, key, value))
    return made


def unpin(storage: Storage, snapshot_id: str) -> int:
    """Delete every pin of ``snapshot_id``; how many there were."""
    keys = pin_keys(storage, snapshot_id)
    for key in keys:
        storage.delete(key)
    return len(keys)


def read_pins(storage: Storage, meta_key: bytes) -> dict[str, Pin]:
    """Snapshot id -> its strongest pin (for good beats a date; a later date beats an earlier)."""
    found: dict[str, Pin] = {}
    for key in pin_keys(storage):
        try:
            value = unseal(meta_key, key, storage.read_bytes(key))
            made = Pin(
                str(value["snapshot"]),
                parse_time(value["until"]) if value["until"] else None,
                str(value.get("note", "")),
                parse_time(value["at"]),
            )
        except FileNotFoundError:
            continue  # unpinned meanwhile
        except (SafeholdError, KeyError, TypeError, ValueError) as exc:
            # It may have been meant to keep a snapshot: prune stops rather than guess.
            raise IntegrityError(
                f"pin {key} cannot be read ({exc})",
                hint="delete that object and pin the snapshot again",
            ) from None
        if made.snapshot != basename(key).split(".")[0]:
            raise IntegrityError(f"pin {key} names another snapshot ({made.snapshot})")
        best = found.get(made.snapshot)
        if best is None or _stronger(made, best):
            found[made.snapshot] = made
    return found


def _stronger(a: Pin, b: Pin) -> bool:
    if b.until is None:
        return False
    return a.until is None or a.until > b.until
