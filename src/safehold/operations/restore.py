"""Database restore: verify, restore into staging, check, swap in. Live data is never at risk.

The plan (``plan_database_restore``) is computed without changing anything; ``--dry-run`` prints
it. Doing it (``restore_database``) follows the plan step by step.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import catalog, naming
from ..crypto import DecryptionKey
from ..errors import IntegrityError, RestoreError, SafeholdError, UsageError
from ..lock import repository_lock
from ..model import Event, EventSink, null_sink
from ..sources import pg_admin
from ..sources.postgres import PgTarget, connect, count_rows
from ..storage import LocalStorage
from . import dump_input, journal
from . import globals as dump_globals
from . import recovery_database as leftovers
from ._pipeline import Progress, unlock_key
from .restore_input import PURPOSE, Archive, is_age_file, is_zstd_file, prove_dump, seekable_dump


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


def restore_database(
    target: PgTarget,
    storage: LocalStorage,
    ref: str,
    options: RestoreOptions | None = None,
    *,
    dry_run: bool = False,
    sink: EventSink = null_sink,
) -> RestoreResult:
    opts = options or RestoreOptions()
    plan = plan_database_restore(target, storage, ref, opts)
    plan = replace(plan, roles=dump_globals.plan_for(target, storage, plan.source.manifest, opts))
    if dry_run:
        return RestoreResult(plan, dry_run=True)
    if plan.refused:  # step 1: before any lock, temp file or staging database
        raise RestoreError(f"{plan.refused[0]}; nothing was changed", hint=plan.refused[1])
    lock_root = storage.root if plan.source.in_repository else None
    with _maybe_lock(lock_root, opts.lock_timeout):
        return _execute(target, storage, plan, opts, sink)


def _execute(
    target: PgTarget,
    storage: LocalStorage,
    plan: RestorePlan,
    opts: RestoreOptions,
    sink: EventSink,
) -> RestoreResult:
    timings: dict[str, float] = {}
    warnings: list[str] = []
    # Refusals come before any work; --roles only: the roles are created, and that is all.
    if only := dump_globals.roles_first(target, plan.roles, opts.no_owner, sink):
        return RestoreResult(plan, False, warnings=only[1], roles_created=only[0])
    clock = time.monotonic()
    key = unlock_key(storage, opts.decryption, plan.source.name) if plan.encrypted else None
    # Names this run's server sessions (ours and pg_restore's): if it is killed, the next run
    # ends them before it cleans up, so nothing of this run still moves underneath.
    session = f"safehold-restore-{secrets.token_hex(6)}"
    with pg_admin.admin(target) as conn, seekable_dump(storage, plan, sink, key) as archive:
        pg_admin.tag_session(conn, session)
        timings["verify"] = time.monotonic() - clock
        server = conn.info.server_version
        if plan.source.manifest is None:
            prove_dump(target, archive.path, server, plan.source.name)
            warnings.append(
                f"{plan.source.name} has no manifest: it was checked by its content "
                "(pg_restore --list, or read as SQL) only, not against a checksum"
            )
            sink(Event("restore", warnings[-1], "warning"))
        if not pg_admin.try_lock_restore(conn, plan.database):
            raise RestoreError(
                f"another restore of {plan.database!r} is running", hint="wait for it to finish"
            )
        created, warned = dump_globals.apply_roles(conn, plan.roles, target, sink)  # no staging yet
        warnings += warned
        tables, staged = _restore_into_staging(
            target, conn, storage, plan, archive, opts, sink, timings, session
        )
        closed: list[journal.Entry] = []
        # Recorded before the swap makes the previous name: a kill before the drop leaves it
        # to the next run, which drops it as asked (it exists only if the swap committed).
        dropping = _record_drop(storage, target, plan, session) if plan.drop_previous else None
        try:  # a failure from here on drops the staging database too
            warnings += dump_globals.apply_database(
                conn, plan.roles, plan.staging, opts.no_owner, sink
            )
            clock = time.monotonic()
            sink(Event("restore", f"swapping {plan.staging!r} in as {plan.database!r}"))
            pg_admin.swap_in(
                conn,
                staging=plan.staging,
                live=plan.database,
                previous=plan.previous or "",
                closing=lambda: closed.append(_record_closed(storage, target, plan, session)),
                reopened=lambda: journal.done(storage, closed.pop()),
            )
        except BaseException:
            _drop_staging(conn, storage, plan, staged)
            if dropping is not None:
                journal.done(storage, dropping)
            raise
        journal.done(storage, staged)  # renamed in: the staging name exists no more
        sink(Event("restore", f"renamed {plan.staging!r} to {plan.database!r}"))
        if plan.previous and dropping is not None:
            sink(Event("restore", f"dropping the previous database {plan.previous!r}"))
            pg_admin.drop(conn, plan.previous)
            journal.done(storage, dropping)
        timings["swap"] = time.monotonic() - clock
    kept = (
        f"; the previous database is kept as {plan.previous!r}"
        if (plan.previous and not plan.drop_previous)
        else ""
    )
    sink(Event("restore", f"restored {plan.source.name} into {plan.database!r}{kept}"))
    return RestoreResult(plan, False, timings, tables, warnings, created)


def _restore_into_staging(
    target: PgTarget,
    conn: Any,
    storage: LocalStorage,
    plan: RestorePlan,
    archive: Archive,
    opts: RestoreOptions,
    sink: EventSink,
    timings: dict[str, float],
    session: str,
) -> tuple[dict[str, int], journal.Entry]:
    """Restore and check the staging database; on any failure drop it and say live is intact.
    The staging database is journalled before it exists: a kill leaves it to the next run."""
    clock = time.monotonic()
    server = conn.info.server_version
    data = leftovers.staging_data(target, plan.database, plan.staging, session)
    staged = journal.record(storage, leftovers.STAGING_KIND, data, PURPOSE)
    sink(Event("restore", f"create staging database {plan.staging!r}"))
    try:
        pg_admin.create_like(conn, plan.staging, plan.database if plan.previous else None)
        if plan.format == "plain":
            sink(Event("restore", f"psql --single-transaction into {plan.staging!r}"))
            progress = Progress(sink, f"restore {plan.database}", archive.path.stat().st_size)
            chunks = dump_input.sql_chunks(archive.path, progress)
            pg_admin.psql_restore(
                target, plan.staging, chunks, server_version_num=server, app_name=session
            )
        else:
            progress = _pg_restore(target, plan, archive, opts, sink, server, session)
        progress.close()
        timings["pg_restore"] = time.monotonic() - clock
        clock = time.monotonic()
        tables = _check_staging(target, plan)
        timings["check"] = time.monotonic() - clock
    except BaseException as exc:
        _drop_staging(conn, storage, plan, staged)
        if isinstance(exc, SafeholdError):
            exc.message += f"; the database {plan.database!r} was not touched"
        raise
    return tables, staged


def _drop_staging(
    conn: Any, storage: LocalStorage, plan: RestorePlan, staged: journal.Entry
) -> None:
    """Drop the staging database after a failure we saw; crossed out only once it is gone
    (a drop that fails too leaves the entry: the next run drops it)."""
    with contextlib.suppress(Exception):
        pg_admin.drop(conn, plan.staging)
        journal.done(storage, staged)


def _record_drop(
    storage: LocalStorage, target: PgTarget, plan: RestorePlan, session: str
) -> journal.Entry | None:
    if not plan.previous:
        return None
    data = leftovers.previous_data(target, plan.database, plan.previous, session)
    return journal.record(storage, leftovers.PREVIOUS_KIND, data, PURPOSE)


def _record_closed(
    storage: LocalStorage, target: PgTarget, plan: RestorePlan, session: str
) -> journal.Entry:
    data = leftovers.closed_data(target, plan.database, plan.previous or "", plan.staging, session)
    return journal.record(storage, leftovers.CLOSED_KIND, data, PURPOSE)


def _pg_restore(
    target: PgTarget,
    plan: RestorePlan,
    archive: Archive,
    opts: RestoreOptions,
    sink: EventSink,
    server: int,
    session: str,
) -> Progress:
    """pg_restore into staging once the file matches its manifest (only its TOC read before)."""
    try:
        total = len(pg_admin.toc_entries(target, archive.path, server))
        archive.confirm()
        progress = Progress(sink, f"restore {plan.database}", total, unit="items")
        sink(Event("restore", f"pg_restore --jobs={plan.jobs} into {plan.staging!r}"))
        pg_admin.pg_restore(
            target,
            plan.staging,
            archive.path,
            jobs=plan.jobs,
            no_owner=opts.no_owner,
            server_version_num=server,
            on_item=lambda: progress.advance(1),
            app_name=session,
        )
    except Exception:
        archive.confirm()  # a damaged file: its checksum says so better than pg_restore
        raise
    finally:
        archive.release()
    return progress


def _check_staging(target: PgTarget, plan: RestorePlan) -> dict[str, int]:
    with connect(target, plan.staging, autocommit=True) as staging:
        counts = count_rows(staging)
    expected = plan.source.manifest.tables if plan.source.manifest else {}
    wrong = {t: (n, counts.get(t)) for t, n in expected.items() if counts.get(t) != n}
    if wrong:
        detail = ", ".join(
            f"{t}: {got} rows, expected {n}" for t, (n, got) in list(wrong.items())[:5]
        )
        raise IntegrityError(
            f"the restored data does not match the manifest ({detail})",
            hint="verify the backup; restore an older one if it is damaged",
        )
    return counts


@contextlib.contextmanager
def _maybe_lock(root: Path | None, timeout: float) -> Iterator[None]:
    if root is None:
        yield
        return
    with repository_lock(root, exclusive=False, timeout=timeout, purpose="safehold restore"):
        yield
