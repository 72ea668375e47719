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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import catalog, naming
from ..compress import ZstdError, zstd_reader
from ..crypto import DecryptionKey, age_reader, is_age
from ..errors import DatabaseError, IntegrityError, RestoreError, SafeholdError, UsageError
from ..lock import repository_lock
from ..model import Event, EventSink, null_sink
from ..sources import pg_admin
from ..sources.postgres import PgTarget, connect, count_rows
from ..storage import LocalStorage
from ._pipeline import HashingReader, Progress, check_digest, sha256_of, unlock_key

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class RestoreOptions:
    target_db: str | None = None  # restore side by side under this name instead of the live db
    jobs: int = 0  # 0: one per core
    drop_previous: bool = False
    no_owner: bool = False
    lock_timeout: float = 300.0
    decryption: DecryptionKey | None = field(default=None, repr=False)  # for .age backups


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

    def steps(self) -> list[str]:
        check = (
            "sha256 against its manifest"
            if self.source.manifest
            else ("no manifest: prove it is a dump with pg_restore --list (warning)")
        )
        steps = [f"verify {self.source.path} ({check})"]
        if self.zstd or self.encrypted:
            what = " and ".join(
                w
                for w, on in (("decrypt (age)", self.encrypted), ("decompress zstd", self.zstd))
                if on
            )
            steps.append(f"{what} into a temporary file beside the repository")
        steps += [
            f"create staging database {self.staging!r}",
            f"pg_restore --jobs={self.jobs} into {self.staging!r}",
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
        return steps


@dataclass(frozen=True)
class RestoreResult:
    plan: RestorePlan
    dry_run: bool
    timings: dict[str, float] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

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
        }


def plan_database_restore(
    target: PgTarget, storage: LocalStorage, ref: str, options: RestoreOptions
) -> RestorePlan:
    # "latest" means the newest good backup of this database, not of any in the repository.
    source = catalog.resolve(storage, ref, "database", target.dbname)
    if source.manifest is not None and source.manifest.kind != "database":
        raise UsageError(f"{source.name} is not a database backup")
    database = options.target_db or target.dbname
    stamp = naming.stamp(datetime.now(UTC))
    with pg_admin.admin(target) as conn:
        present = pg_admin.exists(conn, database)
    return RestorePlan(
        source=source,
        database=database,
        staging=pg_admin.db_name_with_suffix(database, f"_safehold_staging_{stamp}"),
        previous=pg_admin.db_name_with_suffix(database, f"_pre_restore_{stamp}")
        if present
        else None,
        jobs=options.jobs or os.cpu_count() or 1,
        drop_previous=options.drop_previous,
        zstd=_is_zstd(source.path) or ".sql.zst" in source.name,
        encrypted=_is_age(source.path),
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
    if dry_run:
        return RestoreResult(plan, dry_run=True)
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
    clock = time.monotonic()
    key = unlock_key(storage, opts.decryption, plan.source.name) if plan.encrypted else None
    with pg_admin.admin(target) as conn, _seekable_dump(storage, plan, sink, key) as archive:
        timings["verify"] = time.monotonic() - clock
        server = conn.info.server_version
        if plan.source.manifest is None:
            _prove_dump(target, archive, server, plan.source.name)
            warnings.append(
                f"{plan.source.name} has no manifest: it was checked with "
                "pg_restore --list only, not against a checksum"
            )
            sink(Event("restore", warnings[-1], "warning"))
        if not pg_admin.try_lock_restore(conn, plan.database):
            raise RestoreError(
                f"another restore of {plan.database!r} is running", hint="wait for it to finish"
            )
        tables = _restore_into_staging(target, conn, plan, archive, opts, sink, timings)
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
    return RestoreResult(plan, False, timings, tables, warnings)


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
    if not plan.zstd and not plan.encrypted:
        if manifest is not None:
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
            try:
                clear = age_reader(hashed, key) if key is not None else hashed
                with contextlib.ExitStack() as stack:
                    plain = stack.enter_context(zstd_reader(clear)) if plan.zstd else clear
                    while chunk := plain.read(1 << 20):
                        out.write(chunk)
                    if key is not None:
                        while clear.read(1 << 20):  # to the end: the last chunk's tag too
                            pass
            except IntegrityError:
                hashed.drain()
                if manifest is not None:
                    check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                                 manifest.size, hashed.size)  # fmt: skip
                raise
            except ZstdError as exc:
                # Finish hashing first: a checksum mismatch is the more useful message.
                hashed.drain()
                if manifest is not None:
                    check_digest(plan.source.name, manifest.sha256, hashed.hexdigest(),
                                 manifest.size, hashed.size)  # fmt: skip
                raise IntegrityError(
                    f"{plan.source.name} is not a valid zstd stream: {exc}",
                    hint="restore an older backup ('safehold list' shows them)",
                ) from None
            if manifest is not None:
                check_digest(
                    plan.source.name,
                    manifest.sha256,
                    hashed.hexdigest(),
                    manifest.size,
                    hashed.size,
                )
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
    with path.open("rb") as fh:
        return is_age(fh.read(64))


def _is_zstd(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == ZSTD_MAGIC


def _prove_dump(target: PgTarget, archive: Path, server: int, name: str) -> None:
    try:
        pg_admin.toc_entries(target, archive, server)
    except DatabaseError as exc:
        raise IntegrityError(
            f"{name} is not a PostgreSQL custom-format dump ({exc.message})",
            hint="restore --database takes files written by safehold backup or pg_dump -Fc",
        ) from None
