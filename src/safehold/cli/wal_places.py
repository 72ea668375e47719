"""Where WAL goes for ``wal-push``/``wal-fetch`` and the PITR commands. Kept light: the server
starts one process per WAL file, so start-up time is archiving and recovery throughput."""

from __future__ import annotations

from ..operations.pitr import archive as wal
from ..storage import LocalStorage, Storage
from .runtime import Runtime


def wal_archive(rt: Runtime, *, fetching: bool = False) -> wal.WalArchive:
    """The repository, then every location that takes automatic copies (not the long-term
    archive); the configured encryption on push, the decryption key on fetch."""
    settings = rt.settings
    copies: list[tuple[str, Storage]] = []
    if settings.locations:  # boto3 and the copy code load only when there is a location
        from .locations import automatic, locations

        copies = [(place.name, place.storage) for place in automatic(locations(settings))]
    return wal.WalArchive(
        LocalStorage(settings.backup_dir),
        tuple(copies),
        encryption=None if fetching else settings.encryption_key(),
        decryption=settings.decryption_key() if fetching else None,
    )
