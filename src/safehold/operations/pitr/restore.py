"""Restore to a point in time: a base backup, then WAL replayed by the server up to a target.

Steps: pick the newest base backup that ends before the target; stream it from the first place
holding a good copy (the repository, else a copy location) through sha256 and age into
``zstd -d``, unpacked into the target folder (``base_extract``; the folder is wiped when the
stream proves damaged, and the next place is tried); every extracted file is checked
against pg_basebackup's manifest (from CRC-32C sums taken while unpacking, else with
``pg_verifybackup``) and is on disk before the server starts; the recovery settings go into
``postgresql.auto.conf`` with ``recovery.signal``; the server starts, replays WAL (read ahead by
``wal_prefetch``, else fetched by ``wal-fetch``) and promotes at the target; the point reached
is read from its log.

Timelines: ``recovery_target_timeline`` stays at PostgreSQL's default, ``latest``; the server
asks ``wal-fetch`` for ``N.history`` files and follows a switch made by an earlier recovery.
A restored server gets a new timeline; with archiving kept on (``archive=True``, the default
when restoring in place) its WAL joins the same archive and a later recovery can follow it.

A restore point's position is not known before replay: for ``--to-name`` the newest base
backup is tried first, and when the server reports the target was not reached, the next older.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..._proc import shell_word
from ...errors import UsageError
from ...model import Event, EventSink
from ...sources.restored_server import (
    LOG,
    Server,
    TargetNotReached,
    default_server_user,
    own,
    pg_ctl,
    pid_alive,
    preload,
    reached,
    recover,
    running,
    stop,
)
from ...storage import LocalStorage, Storage
from .. import journal
from . import archive as wal
from . import chain as wal_chain
from . import claim
from . import prefetch as wal_prefetch
from .base import choose_base, timeline_switches
from .base_extract import Flusher, clear, extract
from .manifest import verify

__all__ = ["LOG", "Server", "Target", "TargetNotReached", "default_server_user", "restore", "stop"]


@dataclass(frozen=True)
class Target:
    """Where recovery stops: a time, an LSN, a named restore point, or (none set) the end."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.time, self.lsn, self.name)) > 1:
            raise UsageError("give one recovery target: a time, an LSN or a restore point name")
        if self.lsn is not None:
            wal.lsn_value(self.lsn)

    def settings(self) -> dict[str, str]:
        if self.time is not None:
            return {"recovery_target_time": self.time.isoformat(sep=" ")}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        if self.name is not None:
            return {"recovery_target_name": self.name}
        return {}

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat(sep=' ')}"
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        if self.name is not None:
            return f"restore point {self.name!r}"
        return "the end of the archive"


@dataclass(frozen=True)
class RestoreResult:
    base: str
    read_from: str
    target_dir: Path
    port: int
    took_s: float
    extract_s: float
    verify_s: float  # checking the files against the manifest (verified_by says how)
    reached: str  # what the server logged about where recovery stopped
    lsn: str
    timeline: int
    running: bool
    moved_aside: Path | None
    read_ahead: int = 0  # segments the restore_command took from the read-ahead spool
    verified_by: str = ""


def restore(
    archive: wal.WalArchive,
    target_dir: Path,
    target: Target,
    server: Server,
    *,
    force: bool = False,
    keep_running: bool = False,
    archiving: bool | None = None,
    sink: EventSink,
    timeout: float = 3600.0,
    records: Storage | None = None,
    journal_to: LocalStorage | None = None,
) -> RestoreResult:
    """Restore into ``target_dir`` (new, or with ``force`` the current one, moved aside first)
    and recover to ``target``. ``archiving`` (default: on when restoring in place) keeps the
    restored server archiving into this repository. ``records``: the place whose base backup
    records and timelines are read (default: the repository; a location on a new host).
    ``journal_to``: the repository where the restore is journalled, so a killed run is undone
    by the next command (see ``claim``); a failed or interrupted run undoes itself."""
    target_dir = Path(target_dir).absolute()
    with claim.held(target_dir):
        aside = _refusal_or_aside(target_dir, force, server)
        data = claim.describe(target_dir, aside, server.run_as)
        entry = claim.record(journal_to, data) if journal_to else None
        try:
            result = _restore(archive, target_dir, target, server, aside, keep_running,
                              archiving, sink, timeout, records)  # fmt: skip
        except BaseException:
            sink(Event("pitr", f"undoing the unfinished restore: {claim.roll_back(data)}"))
            raise
        finally:
            if entry is not None and journal_to is not None:
                journal.done(journal_to, entry)
    # Said only once nothing can undo it any more: a signal after this line leaves it restored.
    done = f"recovered {result.base} to: {result.reached} (lsn {result.lsn})"
    sink(Event("pitr", f"{done} in {result.took_s:.1f}s"))
    return result


def _restore(
    archive: wal.WalArchive,
    target_dir: Path,
    target: Target,
    server: Server,
    aside: Path | None,
    keep_running: bool,
    archiving: bool | None,
    sink: EventSink,
    timeout: float,
    records: Storage | None,
) -> RestoreResult:
    began = time.monotonic()
    preload()
    if records is None:
        switches = timeline_switches(archive)
    else:
        switches = wal_chain.read_history(archive, wal_chain.newest_timeline(records))
    candidates = choose_base(
        records or archive.primary, to_time=target.time, to_lsn=target.lsn, switches=switches
    )
    if target.name is None:
        candidates = candidates[:1]
    moved = _prepare(target_dir, aside)
    if archiving is None:
        archiving = moved is not None
    for number, base in enumerate(candidates, 1):
        sink(Event("pitr", f"restoring base backup {base.name} into {target_dir}"))
        extract_began = time.monotonic()
        flusher = Flusher(target_dir, server.run_as)
        try:
            where, unpacked = extract(archive, base, flusher, sink)
            extract_s = time.monotonic() - extract_began
            # The flush threads finish the last files while the sums are compared
            verify_s, verified_by = verify(base, unpacked, server.bin_dir, target_dir)
            flusher.finish()
        finally:
            flusher.close()
        sink(
            Event(
                "pitr",
                f"{base.name}: {base.raw_size} bytes extracted in {extract_s:.1f}s, checked "
                f"against its manifest ({verified_by}) in {verify_s:.2f}s, on disk after "
                f"{time.monotonic() - extract_began:.1f}s; starting the server",
            )
        )
        spool = target_dir / wal_prefetch.SPOOL
        _write_recovery(archive, target_dir, target, server, archiving, spool)
        own(target_dir, server.run_as)
        read_ahead = wal_prefetch.Prefetch(
            archive, base.start_segment, switches, spool, server.run_as
        )
        try:
            with read_ahead:
                lsn, timeline = recover(target_dir, server, began + timeout)
        except TargetNotReached:
            if number == len(candidates):
                raise
            sink(Event("pitr", f"{target.describe()} is not after {base.name}; trying older"))
            clear(target_dir)
            continue
        point = reached(target_dir / LOG)
        if not keep_running:
            pg_ctl(server, target_dir, "-m", "fast", "-w", "stop", check=False)
        took = time.monotonic() - began
        return RestoreResult(
            base.name,
            where,
            target_dir,
            server.port,
            took,
            extract_s,
            verify_s,
            point,
            lsn,
            timeline,
            keep_running,
            moved,
            read_ahead.fetched - read_ahead.left,
            verified_by,
        )
    raise AssertionError("unreachable: choose_base returns at least one base backup")


def _refusal_or_aside(target_dir: Path, force: bool, server: Server) -> Path | None:
    """Refuse a folder that is not empty (without ``force``) or whose server runs; else the
    name the current cluster will be moved aside to (None: the folder is new or empty)."""
    if not (target_dir.exists() and any(target_dir.iterdir())):
        return None
    if not force:
        raise UsageError(
            f"{target_dir} is not empty",
            hint="restore into a new folder, or give --force to move the current one aside",
        )
    if running(server, target_dir) or pid_alive(target_dir):
        raise UsageError(
            f"a server is running on {target_dir}",
            hint="stop it first (pg_ctl stop -D ..., or stop its service/container)",
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    return target_dir.with_name(f"{target_dir.name}.safehold-before-{stamp}")


def _prepare(target_dir: Path, aside: Path | None) -> Path | None:
    """An empty folder to restore into, the current cluster moved aside (never deleted)."""
    if aside is not None:
        os.rename(target_dir, aside)
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target_dir, 0o700)
    return aside


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_recovery(
    archive: wal.WalArchive,
    target_dir: Path,
    target: Target,
    server: Server,
    archiving: bool,
    spool: Path,
) -> None:
    if not isinstance(archive.primary, LocalStorage):
        raise UsageError("point-in-time restore needs the local repository (BACKUP_DIR)")
    root = shell_word(str(archive.primary.root.absolute()))
    fetch = f"{server.command} wal-fetch --backup-dir {root}"
    if server.config is not None:
        fetch += f" --config {shell_word(str(server.config.absolute()))}"
    lines = {
        "restore_command": wal_prefetch.restore_command(spool, fetch),
        "recovery_target_action": "promote",
    }
    if not archiving:
        lines["archive_mode"] = "off"  # a side copy must not archive into the source's archive
    lines.update(target.settings())
    with (target_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"\n# safehold pitr restore to {target.describe()}\n")
        conf.writelines(f"{k} = {_conf(v)}\n" for k, v in lines.items())
    (target_dir / "recovery.signal").touch()
    (target_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
