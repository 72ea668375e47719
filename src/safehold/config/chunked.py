"""Which targets are kept chunked, and how this host reaches the chunk store.

``backup.format = "chunked"`` makes every target chunked; ``backup.chunked_targets`` names a few
(``database``, volume names or patterns such as ``user-*``) while the rest stay seed files.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Literal

from .. import naming

if TYPE_CHECKING:
    from ..operations.snapshots import StoreAccess
    from ..storage.base import Storage
    from .schema import Settings


def is_chunked(settings: Settings, kind: Literal["database", "volume"], name: str) -> bool:
    if settings.backup.format == "chunked":
        return True
    for wanted in settings.backup.chunked_targets:
        if kind == "database" and wanted == "database":
            return True
        if kind == "volume" and wanted != "database" and fnmatch.fnmatchcase(name, wanted):
            return True
    return False


def uses_chunks(settings: Settings) -> bool:
    """Whether any target may be chunked (a store is then looked for)."""
    return settings.backup.format == "chunked" or bool(settings.backup.chunked_targets)


def store_access(
    settings: Settings, *, backup: bool = False, storage: Storage | None = None
) -> StoreAccess:
    """The repository's chunk store (in ``storage``; default BACKUP_DIR) with this host's keys:
    the recipients when backing up, the identity (when configured) otherwise."""
    from ..operations.snapshots import StoreAccess
    from ..storage import LocalStorage

    root = settings.backup_dir
    return StoreAccess(
        storage=storage or LocalStorage(root),
        key_file=settings.backup.id_key_file or root / naming.CHUNKS_HOST_KEY,
        encryption=settings.encryption_key() if backup else None,
        decryption=None if backup else settings.decryption_key(),
        cache_dir=root / naming.CHUNKS_CACHE,
        lock_timeout=settings.lock_timeout,
        lock_root=root,
    )
