"""Database backup: pg_dump -> [zstd] -> sha256 -> atomic file, then the manifest (commit point).

The default (pg_dump's gzip, not encrypted) lets pg_dump write the file itself, so its table of
contents gets the data offsets a parallel restore needs; the sha256 is taken after that.
The manifest also records the dump's BLAKE3, which a restore checks (faster) before any SQL.

Beside each dump: its globals (roles, memberships, database settings) as a psql script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NamedTuple

from ... import catalog, naming
from ..._version import __version__
from ...compress import ZstdWriter
from ...crypto import EncryptionKey
from ...errors import DatabaseError, UsageError
from ...model import Event, EventSink, Manifest, null_sink
from ...naming import COMPRESSIONS, Compression
from ...sources import pg_custom_toc, pg_globals, pg_globals_sql
from ...sources.pg_globals import Globals
from ...sources.postgres import DumpStream, PgTarget, connect
from ...storage import LocalStorage
from .._pipeline import (
    PROGRESS_EVERY_S,
    HashingWriter,
    LocalArtifact,
    Progress,
    bind_key,
    commit,
    encrypting,
    fresh_name,
    repository_session,
)


@dataclass(frozen=True)
class BackupOptions:
    compression: Compression = "gzip"
    zstd_level: int = 3
    zstd_threads: int = 0  # 0: one per core
    lock_timeout: float = 300.0
    encryption: EncryptionKey | None = None  # age; None: stored in the clear
    # Several databases share the repository: file names carry the database's name
    # (db_backup_NAME_STAMP.sql) and each has its own latest link; else the seed's names.
    named: bool = False

    def artifact(self, moment: datetime, database: str, encrypted: bool) -> str:
        """The dump's name for ``database`` at ``moment``."""
        named = database if self.named else None
        return naming.database_artifact(moment, self.compression, encrypted, named)


def backup_database(
    target: PgTarget,
    storage: LocalStorage,
    options: BackupOptions | None = None,
    sink: EventSink = null_sink,
) -> Manifest:
    """Back up one database into ``storage`` and return the committed manifest."""
    opts = options or BackupOptions()
    if opts.compression not in COMPRESSIONS:
        raise UsageError(
            f"unknown compression {opts.compression!r}",
            hint=f"use one of {', '.join(COMPRESSIONS)}",
        )
    with repository_session(
        storage, lock_timeout=opts.lock_timeout, purpose="safehold backup", sink=sink
    ):
        opts = replace(opts, encryption=bind_key(storage, opts.encryption))
        encrypted = opts.encryption is not None
        started, name = fresh_name(
            storage, lambda moment: _with_globals(opts.artifact(moment, target.dbname, encrypted))
        )
        sink(Event("backup", f"backing up database {target.where()} to {storage.path(name)}"))
        manifest = dump_database(target, storage, name, started, opts, sink)
        # The seed's latest names follow the database this run backs up under them.
        primary = None if opts.named else target.dbname
        commit(storage, manifest, sink, f"{len(manifest.tables)} tables, ", primary=primary)
    return manifest


def _with_globals(dump: str) -> list[str]:
    """The dump's name, then its globals artifact's (same stamp: both must be free)."""
    return [dump, naming.globals_artifact(dump)]


def dump_database(
    target: PgTarget,
    storage: LocalStorage,
    name: str,
    started: datetime,
    opts: BackupOptions,
    sink: EventSink,
    set_id: str | None = None,
) -> Manifest:
    """Write the artifact ``name`` (the caller holds the repository session) and return its
    manifest, not yet committed. Its globals artifact is committed before that manifest, once
    the dump's bytes are durable (a failed dump leaves no globals behind)."""
    # Captured before pg_dump starts: a role dropped meanwhile is still in the globals.
    captured = capture_globals(target)
    if opts.compression == "gzip" and opts.encryption is None:
        written = _dump_to_file(target, storage, name, sink)
    else:
        written = _dump_streamed(target, storage, name, opts, sink)
    dump = written.dump
    roles = write_globals(storage, name, captured, started, opts.encryption, set_id)
    return Manifest(
        artifact=name,
        kind="database",
        target=target.dbname,
        compression=opts.compression if opts.compression != "gzip" else "pg_dump-gzip",
        size=written.size,
        sha256=written.sha256,
        started_at=started,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**dump.facts, "dump_bytes": written.dump_bytes, "globals": roles.artifact},
        set_id=set_id,
        encryption=opts.encryption.describe() if opts.encryption else None,
        blake3=written.blake3,
    )


class _Written(NamedTuple):
    dump: DumpStream
    size: int
    sha256: str
    blake3: str | None  # what the restore checks before any SQL (``gate_hasher``)
    dump_bytes: int


def _dump_to_file(target: PgTarget, storage: LocalStorage, name: str, sink: EventSink) -> _Written:
    """pg_dump's own gzip archive, written by pg_dump straight into the repository file: a file
    can seek, so pg_dump fills in the data offsets ``pg_restore --jobs`` needs. The sha256 is
    read back from the page cache once pg_dump is done, so it covers those final bytes."""
    progress = Progress(sink, f"dump {target.dbname}", None)
    with LocalArtifact(storage, name) as out:
        with DumpStream(target, compress_level=None, into=out.fileno()) as dump:
            while not dump.wait(PROGRESS_EVERY_S):
                progress.advance(out.size() - progress.done)
            try:
                dump.finish()  # a failed pg_dump raises here, so the file is removed
            except DatabaseError as exc:
                raise out.full_disk(exc.message) or exc from None
        progress.advance(out.size() - progress.done)
        digest, fast, size = out.digest()
    progress.close()
    return _Written(dump, size, digest, fast, size)


def _dump_streamed(
    target: PgTarget, storage: LocalStorage, name: str, opts: BackupOptions, sink: EventSink
) -> _Written:
    """pg_dump through a pipe: -> [zstd] -> sha256 -> [age] -> file, in one pass. Its archive
    has no data offsets (a pipe cannot seek): they are found as the uncompressed stream goes by
    and recorded in the manifest, so a restore writes them into its decompressed copy without
    looking for them (0.2 s of Python per 360 MB, off the recovery time)."""
    # With zstd, pg_dump writes uncompressed and our multi-threaded zstd does the work.
    level = None if opts.compression == "gzip" else 0
    with DumpStream(target, compress_level=level) as dump, storage.open_writer(name) as writer:
        hashed = HashingWriter(writer, fast=True)
        stored, age = encrypting(hashed, opts.encryption)
        zstd = (
            ZstdWriter(stored, opts.zstd_level, opts.zstd_threads)
            if opts.compression == "zstd"
            else None
        )
        out = zstd or stored
        # The database size bounds an uncompressed dump; pg_dump's gzip output has no estimate.
        estimate = dump.facts.get("database_size") if level == 0 else None
        progress = Progress(sink, f"dump {target.dbname}", estimate)
        finder = pg_custom_toc.BlockFinder() if level == 0 else None
        try:
            for chunk in dump:
                out.write(chunk)
                if finder is not None and finder.failed is None:
                    try:
                        finder.feed(chunk)
                    except Exception as exc:  # only a restore's shortcut: never fails a backup
                        finder.failed = repr(exc)
                progress.advance(len(chunk))
            if zstd is not None:
                zstd.finish()
            if age is not None:
                age.finish()
        except BaseException:
            if age is not None:
                age.abort()
            raise
        dump.finish()  # a failed pg_dump raises here, so the writer aborts instead of committing
        progress.close()
    found = finder.result() if finder is not None else None
    if found is not None:
        dump.facts["data_offsets"] = {str(dump_id): at for dump_id, at in found[1].items()}
    return _Written(dump, hashed.size, hashed.hexdigest(), hashed.fast_hexdigest(), progress.done)


# --- globals ----------------------------------------------------------------------------------


def capture_globals(target: PgTarget) -> Globals:
    with connect(target, autocommit=True) as conn:
        return pg_globals.capture(conn)


def write_globals(
    storage: LocalStorage,
    dump_name: str,
    captured: Globals,
    started: datetime,
    key: EncryptionKey | None,
    set_id: str | None = None,
) -> Manifest:
    """Write and commit the globals artifact of ``dump_name``; return its manifest."""
    name = naming.globals_artifact(dump_name)
    plain_name = name.removesuffix(naming.AGE_SUFFIX)
    script = pg_globals_sql.render_script(captured, plain_name, started.isoformat()).encode()
    with storage.open_writer(name) as writer:
        hashed = HashingWriter(writer)
        out, age = encrypting(hashed, key)
        try:
            out.write(script)
            if age is not None:
                age.finish()
        except BaseException:
            if age is not None:
                age.abort()
            raise
    manifest = Manifest(
        artifact=name,
        kind="globals",
        target=captured.database.name,
        compression="none",
        size=hashed.size,
        sha256=hashed.hexdigest(),
        started_at=started,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**captured.facts(), "dump": dump_name},
        set_id=set_id,
        encryption=key.describe() if key else None,
    )
    catalog.write_manifest(storage, manifest)
    return manifest
