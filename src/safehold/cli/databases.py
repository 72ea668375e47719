"""The databases a command works on when ``[database] names`` configures several: which ones a
backup takes (expanded against the server), and which one a restore means.

With one database (``name``/DB_NAME) nothing here changes what the seed does.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import catalog, naming
from ..errors import UsageError
from ..model import BackupRecord, Manifest
from ..operations.database.names import Selection, select_on_server
from ..operations.system.backup import backup_set
from ..storage import LocalStorage
from .runtime import Runtime


def selected(rt: Runtime) -> Selection:
    """The databases a backup takes: the one configured (or --db-name), else ``names``
    matched against the server now, sorted; warnings for patterns that match nothing."""
    settings = rt.settings
    if not settings.many_databases or settings.database_chosen:
        return Selection([settings.database_name()])
    selection = select_on_server(settings.pg_target(), settings.database.names)
    for warning in selection.warnings:
        rt.sink_warning(warning)
    if not selection.databases and not selection.refused:
        raise UsageError(
            f"no database on the server matches database.names "
            f"({', '.join(settings.database.names)}): nothing to back up",
            hint="check the names and patterns ('safehold config' shows them)",
        )
    return selection


def backup_many(
    rt: Runtime, storage: LocalStorage, files: list[str], refused: dict[str, str]
) -> list[Manifest]:
    """Several databases in one run: one lock and one set (scope ``databases``), each a member;
    a database that fails fails the run once the others are written. Returns the dumps'
    manifests."""
    settings = rt.settings
    result = backup_set(
        storage,
        database=None,
        databases=[settings.pg_target(name) for name in files],
        client=None,
        volumes=[],
        options=settings.set_options(),
        refused=refused,
        scope="databases",
        sink=rt.sink,
    )
    manifests = [catalog.read_manifest(storage, name) for name in result.members]
    return [m for m in manifests if m is not None and m.kind == "database"]


def databases_with_backups(records: Iterable[BackupRecord]) -> list[str]:
    """The databases that have a good backup among ``records``, sorted."""
    return sorted(
        {
            r.manifest.target
            for r in records
            if r.kind == "database" and r.status == "ok" and r.manifest
        }
    )


def restore_target(rt: Runtime, storage: LocalStorage, ref: str) -> str:
    """The database ``restore --database REF`` restores into: --db-name when given; with one
    database configured, that one; with several, the one the backup's manifest names (for
    ``latest`` only when a single database has backups: else refused, listing them)."""
    settings = rt.settings
    if not settings.many_databases or settings.database_chosen:
        return settings.database_name()
    fixed = naming.latest_link_of(ref.rsplit("/", 1)[-1])
    if fixed is not None and fixed[0] == "database" and fixed[1] is not None:
        return fixed[1]  # db_backup_NAME_latest.sql names its database
    if ref == "latest" or fixed is not None:
        present = databases_with_backups(catalog.scan(storage))
        if len(present) == 1:
            return present[0]
        raise UsageError(
            f"'{ref}' is ambiguous: {len(present)} databases have backups here"
            + (f" ({', '.join(present)})" if present else ""),
            hint="name one with --db-name"
            + (f", e.g. --db-name {present[0]}" if present else "")
            + ", or restore a file (its manifest names its database)",
        )
    name = ref.rsplit("/", 1)[-1]
    manifest = catalog.read_manifest(storage, name) if naming.parse(name) else None
    if manifest is not None and manifest.kind == "database":
        return manifest.target
    raise UsageError(
        f"{ref} has no manifest naming its database, and several databases are configured",
        hint="name the database to restore into with --db-name",
    )
