"""How old an object is, by the clock of the storage that holds it.

Prune's grace period and lock staleness both ask "how long ago was this written?". On S3 the
answer is the server's ``Date`` minus the object's ``LastModified`` (both server time, so the
clocks of the hosts never matter); on local disk it is now minus the file's mtime. Another
backend answers ``None`` and callers fall back to what they know (a record's own time) or keep
the object.
"""

from __future__ import annotations

from datetime import timedelta

from ..storage import LocalStorage, s3_class
from ..storage.base import Storage


def object_age(storage: Storage, key: str) -> timedelta | None:
    """The time since ``key`` was written; ``None`` when unknown. Missing: FileNotFoundError."""
    if isinstance(storage, LocalStorage):
        return storage.age(key)
    s3 = s3_class()
    if s3 is not None and isinstance(storage, s3):
        return storage.age(key)
    return None
