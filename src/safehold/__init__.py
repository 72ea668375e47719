"""safehold: backup and disaster recovery for PostgreSQL + Docker volume applications.

Library use needs no config file::

    from pathlib import Path
    import safehold

    target = safehold.PgTarget(host="localhost", dbname="container_app", user="postgres")
    repo = safehold.LocalStorage(Path("./backups"))
    manifest = safehold.backup_database(target, repo)
    safehold.restore_database(target, repo, "latest", target_db="container_app_copy")
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__

# The public names, imported on first use: a command line run (e.g. wal-push, started once per
# WAL segment) should not pay for psycopg and the whole backup machinery it does not touch.
_LAZY = {
    "BackupOptions": "operations.database.backup",
    "BackupRecord": "model",
    "Event": "model",
    "LocalStorage": "storage",
    "Manifest": "model",
    "PgTarget": "sources.postgres",
    "RestoreOptions": "operations.database.restore",
    "RestoreResult": "operations.database.restore",
    "SafeholdError": "errors",
    "backup_database": "operations.database.backup",
    "list_backups": "catalog:scan",
    "restore_database": "operations.database.restore",
}

if TYPE_CHECKING:
    from .catalog import scan as list_backups
    from .errors import SafeholdError
    from .model import BackupRecord, Event, Manifest
    from .operations.database.backup import BackupOptions, backup_database
    from .operations.database.restore import RestoreOptions, RestoreResult, restore_database
    from .sources.postgres import PgTarget
    from .storage import LocalStorage


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'safehold' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), attr or name)


__all__ = [
    "BackupOptions",
    "BackupRecord",
    "Event",
    "LocalStorage",
    "Manifest",
    "PgTarget",
    "RestoreOptions",
    "RestoreResult",
    "SafeholdError",
    "__version__",
    "backup_database",
    "list_backups",
    "restore_database",
]
