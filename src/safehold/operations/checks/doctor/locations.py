"""Doctor's checks of where backups are written: a probe object written, read back and removed
through the storage API (so the credentials, the bucket and the permissions are all used, as a
backup would use them), and on S3 the repository lock and uploads interrupted runs left behind.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .... import naming
from ....errors import LockBusy
from ....storage import LocalStorage, Storage
from .check import Check, names

if TYPE_CHECKING:
    from ....storage.s3 import S3Storage


def storage_name(storage: Storage) -> str:
    return f"storage {type(storage).__name__.removesuffix('Storage').lower() or 'location'}"


def probe(name: str, storage: Storage) -> Check:
    where = storage.description
    if isinstance(storage, LocalStorage) and not storage.root.is_dir():
        return Check(name, "SKIP", f"{where} not probed: it does not exist (see backup folder)")
    key = f"{naming.PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    body = b"safehold doctor probe\n"
    storage.put_bytes(key, body)  # a failed put leaves nothing behind (the contract)
    try:
        back = storage.read_bytes(key)
    finally:
        storage.delete(key)
    problem = "read back other bytes than were written" if back != body else ""
    if not problem and storage.exists(key):
        problem = "could not be removed"
    if problem:
        fix = "check the disk, its permissions, or the storage service behind it"
        return Check(name, "FAIL", f"{where}: a probe file {problem}", fix)
    return Check(name, "OK", f"{where}: wrote, read back and removed a probe file")


def location(name: str, storage: Storage) -> list[Check]:
    """``location NAME``: the probe, then (S3) the lock and unfinished uploads."""
    from ....storage.s3 import S3Storage  # boto3 loads only when a location is configured

    check = f"location {name}"
    found = probe(check, storage)
    if found.result != "OK" or not isinstance(storage, S3Storage):
        return [found]
    return [found, _lock(f"{check} lock", storage), _uploads(f"{check} uploads", storage)]


def _lock(name: str, storage: S3Storage) -> Check:
    """Takes and releases the lock when nobody holds it: that is what a copy or prune does
    first, including the check that the server honours conditional writes."""
    from ....storage.s3_lock import S3Lock

    lock = S3Lock(storage, purpose="safehold doctor", heartbeat=False)
    holder = lock.holder()
    if holder is not None:
        detail = f"{storage.url} is locked by {holder.describe()}"
        fix = (
            "a run in progress holds it; one that died is taken over by the next run after "
            f"its ttl ({holder.ttl:.0f}s without a heartbeat)"
        )
        return Check(name, "WARN", detail, fix)
    try:
        with lock.hold(timeout=0):
            pass
    except LockBusy as exc:  # taken between our look and our try
        return Check(name, "WARN", exc.message, exc.hint or "")
    return Check(name, "OK", f"took and released the repository lock on {storage.url}")


def _uploads(name: str, storage: S3Storage) -> Check:
    pending = storage.pending_uploads()
    if not pending:
        return Check(name, "OK", "no unfinished multipart upload")
    oldest = min(u.initiated for u in pending)
    age = datetime.now(UTC) - oldest
    detail = (
        f"{len(pending)} unfinished multipart upload(s) of interrupted runs (or runs in "
        f"progress): {names([u.key for u in pending])}; the oldest started "
        f"{age.total_seconds() / 3600:.1f} h ago"
    )
    fix = "'safehold prune' aborts those older than a day (their parts are billed storage)"
    return Check(name, "WARN", detail, fix)
