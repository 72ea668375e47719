"""How old an object is, by the clock of the storage that holds it.

Prune's grace period and lock staleness both ask "how long ago was this written?". On S3 the
answer is the server's ``Date`` minus the object's ``LastModified`` (both server time, so the
clocks of the hosts never matter); on local disk it is now minus the file's mtime. Another
backend answers ``None`` and callers fall back to what they know (a record's own time) or keep
the object.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ..storage import LocalStorage, S3Storage
from ..storage.base import Storage
from ..storage.s3_client import is_not_found


def object_age(storage: Storage, key: str) -> timedelta | None:
    """The time since ``key`` was written; ``None`` when unknown. Missing: FileNotFoundError."""
    if isinstance(storage, LocalStorage):
        return timedelta(seconds=max(0.0, time.time() - storage.path(key).stat().st_mtime))
    if isinstance(storage, S3Storage):
        try:
            head = storage.client.head_object(Bucket=storage.bucket, Key=storage.object_key(key))
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(key) from None
            raise storage.fail(exc, "look up", key) from exc
        modified: datetime = head["LastModified"]
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return max(timedelta(0), now - modified)
    return None
