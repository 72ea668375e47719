"""Database backup: pg_dump -> [zstd] -> sha256 -> atomic file, then the manifest (commit point)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from .. import naming
from .._version import __version__
from ..compress import ZstdWriter
from ..crypto import EncryptionKey
from ..errors import UsageError
from ..model import Event, EventSink, Manifest, null_sink
from ..naming import COMPRESSIONS
from ..sources.postgres import DumpStream, PgTarget
from ..storage import LocalStorage
from ._pipeline import (
    HashingWriter,
    Progress,
    bind_key,
    commit,
    encrypting,
    fresh_name,
    repository_session,
)

Compression = Literal["gzip", "zstd", "none"]


@dataclass(frozen=True)
class BackupOptions:
    compression: Compression = "gzip"
    zstd_level: int = 3
    zstd_threads: int = 0  # 0: one per core
    lock_timeout: float = 300.0
    encryption: EncryptionKey | None = None  # age; None: stored in the clear


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
            storage,
            lambda moment: [naming.database_artifact(moment, opts.compression, encrypted)],
        )
        sink(Event("backup", f"backing up database {target.where()} to {storage.path(name)}"))
        manifest = dump_database(target, storage, name, started, opts, sink)
        commit(storage, manifest, sink, f"{len(manifest.tables)} tables, ")
    return manifest


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
    manifest, not yet committed."""
    # With zstd, pg_dump writes uncompressed and our multi-threaded zstd does the work.
    level = None if opts.compression == "gzip" else 0
    with DumpStream(target, compress_level=level) as dump, storage.open_writer(name) as writer:
        hashed = HashingWriter(writer)
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
        try:
            for chunk in dump:
                out.write(chunk)
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
    return Manifest(
        artifact=name,
        kind="database",
        target=target.dbname,
        compression=opts.compression if opts.compression != "gzip" else "pg_dump-gzip",
        size=hashed.size,
        sha256=hashed.hexdigest(),
        started_at=started,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**dump.facts, "dump_bytes": progress.done},
        set_id=set_id,
        encryption=opts.encryption.describe() if opts.encryption else None,
    )
