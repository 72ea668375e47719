"""Database backup: pg_dump -> [zstd] -> sha256 -> atomic file, then the manifest (commit point)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .. import catalog, naming
from .._version import __version__
from ..compress import ZstdWriter
from ..errors import UsageError
from ..lock import repository_lock
from ..model import Event, EventSink, Manifest, null_sink
from ..sources.postgres import DumpStream, PgTarget
from ..storage import LocalStorage
from ._pipeline import HashingWriter, Progress

Compression = Literal["gzip", "zstd", "none"]
COMPRESSIONS: tuple[str, ...] = ("gzip", "zstd", "none")


@dataclass(frozen=True)
class BackupOptions:
    compression: Compression = "gzip"
    zstd_level: int = 3
    zstd_threads: int = 0  # 0: one per core
    lock_timeout: float = 300.0


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
    storage.ensure()
    with repository_lock(
        storage.root, exclusive=True, timeout=opts.lock_timeout, purpose="safehold backup"
    ) as lock:
        if lock.stale_pid is not None:
            sink(
                Event(
                    "lock",
                    f"previous run (pid {lock.stale_pid}) died before finishing; "
                    "its lock was released by the system",
                    "warning",
                )
            )
        for partial in storage.remove_stale_partials():
            sink(
                Event("cleanup", f"removed unfinished file {partial} of a run that died", "warning")
            )
        started, name = _fresh_name(storage, opts.compression)
        sink(Event("backup", f"backing up database {target.where()} to {storage.path(name)}"))
        manifest = _dump(target, storage, name, started, opts, sink)
        catalog.write_manifest(storage, manifest)
        catalog.update_latest_links(storage, catalog.scan(storage))
    sink(
        Event(
            "backup",
            f"backup {name} done: {manifest.size} bytes in {manifest.duration_s:.1f}s, "
            f"{len(manifest.tables)} tables",
            data={"artifact": name, "size": manifest.size, "duration_s": manifest.duration_s},
        )
    )
    return manifest


def _dump(
    target: PgTarget,
    storage: LocalStorage,
    name: str,
    started: datetime,
    opts: BackupOptions,
    sink: EventSink,
) -> Manifest:
    # With zstd, pg_dump writes uncompressed and our multi-threaded zstd does the work.
    level = None if opts.compression == "gzip" else 0
    with DumpStream(target, compress_level=level) as dump, storage.open_writer(name) as writer:
        hashed = HashingWriter(writer)
        zstd = (
            ZstdWriter(hashed, opts.zstd_level, opts.zstd_threads)
            if opts.compression == "zstd"
            else None
        )
        out = zstd or hashed
        # The database size bounds an uncompressed dump; pg_dump's gzip output has no estimate.
        estimate = dump.facts.get("database_size") if level == 0 else None
        progress = Progress(sink, f"dump {target.dbname}", estimate)
        for chunk in dump:
            out.write(chunk)
            progress.advance(len(chunk))
        if zstd is not None:
            zstd.finish()
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
    )


def _fresh_name(storage: LocalStorage, compression: str) -> tuple[datetime, str]:
    """Names carry seconds; a second backup within the same second waits for the next one."""
    while True:
        started = datetime.now(UTC)
        name = naming.database_artifact(started, compression)
        if not storage.exists(name) and not storage.exists(naming.manifest_key(name)):
            return started, name
        time.sleep(1.0 - started.microsecond / 1e6)
