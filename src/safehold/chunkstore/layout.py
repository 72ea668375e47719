"""Where each chunk store object lives: every key under ``chunks/`` is formed here, from the
folders ``naming`` holds with the rest of the repository's layout.

Names are random (packs, index objects, locks) or a UTC stamp plus randomness (snapshots), so a
key is never written twice and nothing is ever overwritten: an Object Lock bucket can hold the
store as it is.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from ..naming import CHUNKS_CONFIG as CONFIG
from ..naming import CHUNKS_DIR as ROOT
from ..naming import CHUNKS_ID_KEY as ID_KEY
from ..naming import CHUNKS_INDEX as INDEX
from ..naming import CHUNKS_LOCKS as LOCKS
from ..naming import CHUNKS_PACKS as PACKS
from ..naming import CHUNKS_PINS as PINS
from ..naming import CHUNKS_SNAPSHOTS as SNAPSHOTS

__all__ = ["CONFIG", "ID_KEY", "INDEX", "LOCKS", "PACKS", "PINS", "ROOT", "SNAPSHOTS"]

STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^[0-9a-f]{32}$")
_SNAPSHOT = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{16}$")


def new_name() -> str:
    """A fresh random object name (32 hex digits)."""
    return secrets.token_hex(16)


def is_name(text: str) -> bool:
    return bool(_NAME.match(text))


def pack_key(name: str) -> str:
    return f"{PACKS}/{name[:2]}/{name}"


def pack_folders() -> list[str]:
    """The 256 folders packs are spread over (a listing is one level deep)."""
    return [f"{PACKS}/{i:02x}" for i in range(256)]


def index_key(name: str) -> str:
    return f"{INDEX}/{name}"


def lock_key(name: str) -> str:
    return f"{LOCKS}/{name}"


def new_snapshot_id(moment: datetime) -> str:
    return f"{moment.astimezone(UTC).strftime(STAMP)}-{secrets.token_hex(8)}"


def is_snapshot_id(text: str) -> bool:
    return bool(_SNAPSHOT.match(text))


def snapshot_key(snapshot_id: str) -> str:
    return f"{SNAPSHOTS}/{snapshot_id}"


def basename(key: str) -> str:
    return key.rsplit("/", 1)[-1]
