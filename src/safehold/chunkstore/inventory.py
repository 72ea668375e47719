"""What is actually stored: every pack object, and the partial uploads killed writers left.

Listings are one level deep, so the packs are listed folder by folder (256 of them) on a few
threads. Partial uploads (a temp file on disk, an unfinished multipart upload on S3) are never
visible under a final name; prune removes the chunk store's own once they are older than its
grace period, and never touches anyone else's.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from ..storage import LocalStorage, S3Storage
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
    elif isinstance(storage, S3Storage):
        cutoff = datetime.now(UTC) - older_than
        for upload in storage.pending_uploads():
            if not upload.key.startswith(f"{ROOT}/") or upload.initiated > cutoff:
                continue
            # botocore's own errors: an upload already gone or not ours to abort is left alone
            with contextlib.suppress(Exception):
                storage.client.abort_multipart_upload(
                    Bucket=storage.bucket,
                    Key=storage.object_key(upload.key),
                    UploadId=upload.upload_id,
                )
                removed.append(upload.key)
    return removed
