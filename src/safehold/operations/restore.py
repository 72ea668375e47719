"""Database restore: verify, restore into staging, check, swap in. Live data is never at risk.

The plan (``plan_database_restore``) is computed without changing anything; ``--dry-run`` prints
it. Doing it (``restore_database``) follows the plan step by step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import catalog, naming
from ..crypto import DecryptionKey, age_reader, is_age
from ..errors import DatabaseError, IntegrityError, RestoreError, SafeholdError, UsageError
from ..lock import repository_lock
from ..model import ByteSource, Event, EventSink, null_sink
from ..sources import pg_admin
from ..sources.postgres import PgTarget, connect, count_rows
from ..storage import LocalStorage
from . import dump_input
from . import globals as dump_globals
from ._pipeline import HashingReader, Progress, check_digest, sha256_of, unlock_key


@dataclass(frozen=True)
class RestoreOptions:
    target_db: str | None = None  # restore side by side under this name instead of the live db
    jobs: int = 0  # 0: one per core
    drop_previous: bool = False
    no_owner: bool = False
    lock_timeout: float = 300.0
    decryption: DecryptionKey | None = field(default=None, repr=False)  # for .age backups
    roles: dump_globals.RolesMode = "create"  # the dump's globals: create, skip, only them


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
    encrypted = _is_age(source.path)
    zstd = dump.compression == "zstd"
    if ours or encrypted:  # the name tells what the content hides (as it always did)
        zstd = _is_zstd(source.path) or ".sql.zst" in source.name
    database = options.target_db or target.dbname
    stamp = naming.stamp(datetime.now(UTC))
    with pg_admin.admin(target) as conn:
        present = pg_admin.exists(conn, database)
        refused = pg_admin.restore_refusal(conn, database)
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
    with pg_admin.admin(target) as conn, _seekable_dump(storage, plan, sink, key) as archive:
        timings["verify"] = time.monotonic() - clock
        server = conn.info.server_version
        if plan.source.manifest is None:
            _prove_dump(target, archive, server, plan.source.name)
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
        tables = _restore_into_staging(target, conn, plan, archive, opts, sink, timings)
        warnings += dump_globals.apply_database(conn, plan.roles, plan.staging, opts.no_owner, sink)
        clock = time.monotonic()
        sink(Event("restore", f"swapping {plan.staging!r} in as {plan.database!r}"))
        try:
            pg_admin.swap_in(
                conn, staging=plan.staging, live=plan.database, previous=plan.previous or ""
            )
        except BaseException:
            pg_admin.drop(conn, plan.staging)
            raise
        if plan.previous and plan.drop_previous:
            pg_admin.drop(conn, plan.previous)
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
    plan: RestorePlan,
    archive: Path,
    opts: RestoreOptions,
    sink: EventSink,
    timings: dict[str, float],
) -> dict[str, int]:
    """Restore and check the staging database; on any failure drop it and say live is intact."""
    clock = time.monotonic()
    server = conn.info.server_version
    pg_admin.create_like(conn, plan.staging, plan.database if plan.previous else None)
    try:
        if plan.format == "plain":
            sink(Event("restore", f"psql --single-transaction into {plan.staging!r}"))
            progress = Progress(sink, f"restore {plan.database}", archive.stat().st_size)
            chunks = dump_input.sql_chunks(archive, progress)
            pg_admin.psql_restore(target, plan.staging, chunks, server_version_num=server)
        else:
            progress = _pg_restore(target, plan, archive, opts, sink, server)
        progress.close()
        timings["pg_restore"] = time.monotonic() - clock
        clock = time.monotonic()
        tables = _check_staging(target, plan)
        timings["check"] = time.monotonic() - clock
    except BaseException as exc:
        with contextlib.suppress(Exception):
            pg_admin.drop(conn, plan.staging)
        if isinstance(exc, SafeholdError):
            exc.message += f"; the database {plan.database!r} was not touched"
        raise
    return tables


def _pg_restore(
    target: PgTarget,
    plan: RestorePlan,
    archive: Path,
    opts: RestoreOptions,
    sink: EventSink,
    server: int,
) -> Progress:
    total = len(pg_admin.toc_entries(target, archive, server))
    progress = Progress(sink, f"restore {plan.database}", total, unit="items")
    sink(Event("restore", f"pg_restore --jobs={plan.jobs} into {plan.staging!r}"))
    pg_admin.pg_restore(
        target,
        plan.staging,
        archive,
        jobs=plan.jobs,
        no_owner=opts.no_owner,
        server_version_num=server,
        on_item=lambda: progress.advance(1),
    )
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


@contextlib.contextmanager
def _seekable_dump(
    storage: LocalStorage, plan: RestorePlan, sink: EventSink, key: DecryptionKey | None = None
) -> Iterator[Path]:
    """The verified archive as a seekable file (pg_restore --jobs needs one).

    A plain dump is hashed in place. A zstd or encrypted dump is hashed, decrypted and
    decompressed in the same pass into a temp file, which is removed afterwards (age
    authenticates every chunk up to the end of the stream, which this pass reads).
    """
    path = plan.source.path
    manifest = plan.source.manifest
    size = path.stat().st_size
    progress = Progress(sink, f"verify {plan.source.name}", size)
    if not (plan.zstd or plan.gzip or plan.encrypted) or plan.format == "plain":
        if manifest is not None:  # (a plain SQL dump streams into psql as it is read)
            with path.open("rb") as fh:
                digest, got = sha256_of(fh, progress)
            check_digest(plan.source.name, manifest.sha256, digest, manifest.size, got)
            progress.close()
        yield path
        return
    scratch = _scratch_dir(storage)
    fd, temp_name = tempfile.mkstemp(prefix=".restore-", suffix=".dump", dir=scratch)
    temp = Path(temp_name)
    try:
        with path.open("rb") as raw, os.fdopen(fd, "wb") as out:
            hashed = HashingReader(raw, progress)
            compression = "zstd" if plan.zstd else "gzip" if plan.gzip else None
            try:
                clear: ByteSource = age_reader(hashed, key) if key is not None else hashed
                plain = dump_input.opened(clear, compression)
                while chunk := plain.read(1 << 20):
                    out.write(chunk)
                if key is not None:
                    while clear.read(1 << 20):  # to the end: the last chunk's tag too
                        pass
            except dump_input.DAMAGED as exc:
                # Finish hashing first: a checksum mismatch is the more useful message.
                hashed.drain()
                if manifest is not None:
                    check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                                 manifest.size, hashed.size)  # fmt: skip
                if isinstance(exc, IntegrityError):
                    raise
                raise IntegrityError(
                    f"{plan.source.name} is not a valid {compression} stream: {exc}",
                    hint="restore an older backup ('safehold list' shows them)",
                ) from None
            if manifest is not None:
                check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                             manifest.size, hashed.size)  # fmt: skip
        progress.close()
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _scratch_dir(storage: LocalStorage) -> Path:
    scratch = storage.path(naming.TMP_DIR)
    try:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.gettempdir())
    return scratch if os.access(scratch, os.W_OK) else Path(tempfile.gettempdir())


def _is_age(path: Path) -> bool:
    return path.is_file() and is_age(dump_input.head(path))


def _is_zstd(path: Path) -> bool:
    return dump_input.head(path, 4) == dump_input.ZSTD_MAGIC


def _prove_dump(target: PgTarget, archive: Path, server: int, name: str) -> None:
    if dump_input.identify(archive).format == "plain":
        return  # its head was read as SQL when planning; psql checks every statement
    try:
        pg_admin.toc_entries(target, archive, server)
    except DatabaseError as exc:
        raise IntegrityError(
            f"{name} is not a readable pg_dump archive ({exc.message})",
            hint="restore --database takes pg_dump output: custom, tar, directory or plain SQL",
        ) from None
