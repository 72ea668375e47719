"""Database restore: verify, restore into staging, check, swap in. Live data is never at risk.

The plan (``plan_database_restore``) is computed without changing anything; ``--dry-run`` prints
it. Doing it (``restore_database``) follows the plan step by step.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import IntegrityError, RestoreError, SafeholdError
from ...lock import repository_lock
from ...model import Event, EventSink, null_sink
from ...sources import pg_admin
from ...sources.postgres import PgTarget, connect, count_rows
from ...storage import LocalStorage
from .. import journal
from .._pipeline import Progress, unlock_key
from . import dump_input
from . import globals as dump_globals
from . import recovery as leftovers
from .archive import PURPOSE, Archive, prove_dump, seekable_dump
from .plan import RestoreOptions, RestorePlan, RestoreResult, plan_database_restore

__all__ = [  # the plan's names are imported from here too
    "RestoreOptions",
    "RestorePlan",
    "RestoreResult",
    "plan_database_restore",
    "restore_database",
]


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
    # The restore lock comes before the unpacking: a second restore of the same database is
    # refused at once instead of after decompressing the whole dump.
    with (
        pg_admin.admin(target) as conn,
        _restore_locked(conn, plan.database, session),
        seekable_dump(storage, plan, sink, key) as archive,
    ):
        timings["verify"] = time.monotonic() - clock
        server = conn.info.server_version
        if plan.source.manifest is None:
            prove_dump(target, archive.path, server, plan.source.name)
            warnings.append(
                f"{plan.source.name} has no manifest: it was checked by its content "
                "(pg_restore --list, or read as SQL) only, not against a checksum"
            )
            sink(Event("restore", warnings[-1], "warning"))
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
def _restore_locked(conn: Any, database: str, session: str) -> Iterator[None]:
    """Tag this run's session and hold the server-side lock two restores of one database
    share (released with the session)."""
    pg_admin.tag_session(conn, session)
    if not pg_admin.try_lock_restore(conn, database):
        raise RestoreError(
            f"another restore of {database!r} is running", hint="wait for it to finish"
        )
    yield


@contextlib.contextmanager
def _maybe_lock(root: Path | None, timeout: float) -> Iterator[None]:
    if root is None:
        yield
        return
    with repository_lock(root, exclusive=False, timeout=timeout, purpose="safehold restore"):
        yield
