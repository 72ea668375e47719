"""What is actually stored: every pack object, and the partial uploads killed writers left.

Listings are one level deep, so the packs are listed folder by folder (256 of them) on a few
threads. Partial uploads (a temp file on disk, an unfinished multipart upload on S3) are never
visible under a final name; prune removes the chunk store's own once they are older than its
grace period, and never touches anyone else's.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from ..errors import StorageError
from ..storage import LocalStorage, s3_class
from ..storage.base import Storage
from .layout import INDEX, LOCKS, ROOT, SNAPSHOTS, basename, is_name, pack_folders

LISTERS = 8


def stored_packs(storage: Storage) -> set[str]:
    """The names of every pack object in the store."""
    with ThreadPoolExecutor(LISTERS, thread_name_prefix="safehold-list") as pool:
        listings = pool.map(storage.list, pack_folders())
        return {n for keys in listings for n in map(basename, keys) if is_name(n)}


def remove_partials(storage: Storage, older_than: timedelta) -> list[str]:
    """Remove the store's partial uploads left by dead processes; returns what went."""
    removed: list[str] = []
    if isinstance(storage, LocalStorage):
        # A temp file names its writer's pid: only a dead process's are removed.
        for folder in [*pack_folders(), INDEX, SNAPSHOTS, LOCKS]:
            removed += storage.remove_stale_partials(folder)
    elif (s3 := s3_class()) is not None and isinstance(storage, s3):
        # Cleaning is a courtesy of prune: one it cannot do now is done by the next.
        with contextlib.suppress(StorageError):
            removed += storage.abort_stale_uploads(older_than, prefix=f"{ROOT}/")
    return removed
