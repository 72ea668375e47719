"""The plan of a database restore (``--dry-run`` prints it): what is read, where it goes, what
is kept aside, computed without changing anything; and the options and result it travels with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ... import catalog, naming
from ...crypto import DecryptionKey
from ...errors import UsageError
from ...sources import pg_admin
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from . import dump_input
from . import globals as dump_globals
from .archive import is_age_file, is_zstd_file


@dataclass(frozen=True)
class RestoreOptions:
    target_db: str | None = None  # restore side by side under this name instead of the live db
    jobs: int = 0  # 0: one per core
    drop_previous: bool = False
    no_owner: bool = False
    lock_timeout: float = 300.0
    decryption: DecryptionKey | None = field(default=None, repr=False)  # for .age backups
    roles: dump_globals.RolesMode = "create"  # the dump's globals: create, skip, only them
    force: bool = False  # replace the live database with a backup of another database

    @classmethod
    def scratch(
        cls,
        target_db: str,
        *,
        jobs: int,
        decryption: DecryptionKey | None,
        roles: dump_globals.RolesMode = "create",
        lock_timeout: float = 300.0,
    ) -> RestoreOptions:
        """A drill's restore into a throwaway database: replaced if left over, no owners (a
        sandbox has none of the dump's roles; its policies still name them, so by default the
        roles come from the dump's globals, created when missing)."""
        return cls(
            target_db=target_db,
            jobs=jobs,
            drop_previous=True,
            no_owner=True,
            lock_timeout=lock_timeout,
            decryption=decryption,
            roles=roles,
        )


@dataclass(frozen=True)
class RestorePlan:
    source: catalog.Resolved
    database: str
    staging: str
    previous: str | None  # set when a database of that name exists and will be kept aside
    jobs: int
    drop_previous: bool
    zstd: bool
    encrypted: bool = False
    format: dump_input.Format = "custom"  # told from the content, not the name
    gzip: bool = False
    refused: tuple[str, str] | None = None  # (why, fix): this role may not restore here
    roles: dump_globals.RolesPlan | None = None  # the dump's globals (None: it has none)

    def steps(self) -> list[str]:
        held = dump_input.DumpInput(self.format, "gzip" if self.gzip else None).describe()
        proof = "" if self.format == "plain" else "; pg_restore --list proves it"
        check = (
            "sha256 against its manifest"
            if self.source.manifest
            else f"no manifest, a warning: its content is {held}{proof}"
        )
        steps = [f"REFUSED: {self.refused[0]} (fix: {self.refused[1]})"] if self.refused else []
        steps.append(f"verify {self.source.path} ({check})")
        unwrap = (("decrypt (age)", self.encrypted), ("decompress zstd", self.zstd))
        if any(on for _, on in unwrap) or self.gzip:
            what = " and ".join(w for w, on in (*unwrap, ("decompress gzip", self.gzip)) if on)
            into = "psql, streamed" if self.format == "plain" else "a temporary file nearby"
            steps.append(f"{what} into {into}")
        steps += [
            f"create staging database {self.staging!r}",
            f"psql -v ON_ERROR_STOP=1 --single-transaction into {self.staging!r}"
            if self.format == "plain"
            else f"pg_restore --jobs={self.jobs} into {self.staging!r}",
            "check rows per table against the manifest"
            if self.source.manifest and self.source.manifest.tables
            else "check the staging database answers queries",
        ]
        if self.previous:
            steps.append(
                f"end sessions on {self.database!r}; rename it to {self.previous!r}; "
                f"rename {self.staging!r} to {self.database!r} (one transaction)"
            )
            if self.drop_previous:
                steps.append(f"drop {self.previous!r}")
        else:
            steps.append(f"rename {self.staging!r} to {self.database!r} (a new database)")
        return dump_globals.with_roles_steps(self.roles, steps, self.staging)


@dataclass(frozen=True)
class RestoreResult:
    plan: RestorePlan
    dry_run: bool
    timings: dict[str, float] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    roles_created: list[str] = field(default_factory=list)  # from the dump's globals

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.plan.source.path),
            "database": self.plan.database,
            "previous": None if self.plan.drop_previous else self.plan.previous,
            "dry_run": self.dry_run,
            "plan": self.plan.steps(),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "tables": self.tables,
            "warnings": self.warnings,
            "roles_created": self.roles_created,
        }


def plan_database_restore(
    target: PgTarget, storage: LocalStorage, ref: str, options: RestoreOptions
) -> RestorePlan:
    folder = Path(ref)
    if ref != "latest" and folder.is_dir():  # a pg_dump -Fd folder: the catalog knows files
        source = catalog.Resolved(folder, folder.name or ref, None, False)
    else:  # "latest" means the newest good backup of this database, not of any in the repository
        source = catalog.resolve(storage, ref, "database", target.dbname)
    if source.manifest is not None and source.manifest.kind != "database":
        raise UsageError(f"{source.name} is not a database backup")
    # A catalogued backup is ours (custom format): its sha256 is checked before it is read.
    ours = source.manifest is not None
    dump = dump_input.DumpInput("custom") if ours else dump_input.identify(source.path)
    encrypted = is_age_file(source.path)
    zstd = dump.compression == "zstd"
    if ours or encrypted:  # the name tells what the content hides (as it always did)
        zstd = is_zstd_file(source.path) or ".sql.zst" in source.name
    database = options.target_db or target.dbname
    stamp = naming.stamp(datetime.now(UTC))
    with pg_admin.admin(target) as conn:
        present = pg_admin.exists(conn, database)
        refused = _other_database(source, database, options) or pg_admin.restore_refusal(
            conn, database
        )
    parallel = dump.format in ("custom", "directory")  # pg_restore: tar has no parallel mode
    return RestorePlan(
        source=source,
        database=database,
        staging=pg_admin.db_name_with_suffix(database, f"_safehold_staging_{stamp}"),
        previous=pg_admin.db_name_with_suffix(database, f"_pre_restore_{stamp}")
        if present
        else None,
        jobs=(options.jobs or os.cpu_count() or 1) if parallel else 1,
        drop_previous=options.drop_previous,
        zstd=zstd,
        encrypted=encrypted,
        format=dump.format,
        gzip=dump.compression == "gzip",
        refused=refused,
    )


def _other_database(
    source: catalog.Resolved, database: str, options: RestoreOptions
) -> tuple[str, str] | None:
    """A backup of database A restored over the live B replaces one application's data with
    another's: refused unless the operator names where it goes or says --force."""
    named = source.manifest.target if source.manifest is not None else None
    if not named or named == database or options.target_db or options.force:
        return None
    if options.roles == "only":
        return None  # only roles are created; no database is replaced
    return (
        f"{source.name} is a backup of database {named!r}, not of {database!r}: restoring it "
        f"would replace {database!r} with another database's content",
        f"--target-db {named} restores it beside the live database; --force replaces "
        f"{database!r} with it",
    )
