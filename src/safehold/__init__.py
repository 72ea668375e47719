"""safehold: backup and disaster recovery for PostgreSQL + Docker volume applications.

Library use needs no config file::

    from pathlib import Path
    import safehold

    target = safehold.PgTarget(host="localhost", dbname="container_app", user="postgres")
    repo = safehold.LocalStorage(Path("./backups"))
    manifest = safehold.backup_database(target, repo)
    safehold.restore_database(target, repo, "latest", target_db="container_app_copy")
"""

from ._version import __version__
from .catalog import scan as list_backups
from .errors import SafeholdError
from .model import BackupRecord, Event, Manifest
from .operations.backup import BackupOptions, backup_database
from .operations.restore import RestoreOptions, RestoreResult, restore_database
from .sources.postgres import PgTarget
from .storage import LocalStorage

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
