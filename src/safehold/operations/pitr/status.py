"""The point-in-time-recovery line of ``safehold status``: how fresh the WAL archive is (the
achieved RPO for PITR: what a restore to "now" would lose) and the newest base backup.

The rules, when the repository holds archived WAL or base backups:
- the most recently archived file (by its sidecar's mtime: the moment ``wal-push`` committed
  it) is older than ``objectives.wal_stall_minutes``: ``stalled``, warning; older than twice
  that: ``stalled``, critical (as for an RPO breach);
- base backups but no archived WAL at all: ``stalled``, critical;
- archived WAL but no base backup: ``no base backup``, warning (there is nothing to replay onto);
- the server's archiver is failing (``pg_stat_archiver``: its last failure is newer than its last
  success): ``failing``, critical, whatever the repository holds. The repository alone cannot
  tell: its newest file looks fresh for a while after the archiver started failing.
Only ``LocalStorage`` has mtimes, which is where status reads. A pure function of the files, the
archiver reading it is handed and ``now``, like the rest of status; ``read_archiver`` is the one
function here that talks to the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from ...sources.postgres import PgTarget, connect
from ...storage import LocalStorage
from . import archive as wal
from .base import BaseBackup
from .prune import read_bases

Level = Literal["ok", "warning", "critical"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical")
DEFAULT_WAL_STALL_S = 15 * 60.0
ARCHIVER_TIMEOUT_S = 5  # status is polled by monitors: a dead server must not hang it


@dataclass(frozen=True)
class Archiver:
    """The server's ``archive_mode`` and its ``pg_stat_archiver`` row."""

    mode: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None

    @property
    def failing(self) -> bool:
        failed, ok = self.last_failed_time, self.last_archived_time
        return bool(self.failed_count and failed and (ok is None or failed > ok))

    def to_json(self) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            return at.isoformat() if at else None

        return {
            "archive_mode": self.mode,
            "failing": self.failing,
            "archived_count": self.archived_count,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_time": iso(self.last_archived_time),
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal,
            "last_failed_time": iso(self.last_failed_time),
        }


def read_archiver(target: PgTarget) -> Archiver:
    """The archiver's state on the server (raises the usual ``DatabaseError`` when it cannot be
    reached). The statistics are readable by any role."""
    quick = replace(target, connect_timeout=min(target.connect_timeout, ARCHIVER_TIMEOUT_S))
    with connect(quick, quick.maintenance_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('archive_mode'), archived_count, last_archived_wal,"
            " last_archived_time, failed_count, last_failed_wal, last_failed_time"
            " FROM pg_stat_archiver"
        ).fetchone()
    assert row is not None  # pg_stat_archiver always has its one row
    return Archiver(str(row[0]), int(row[1]), row[2], row[3], int(row[4]), row[5], row[6])


@dataclass(frozen=True)
class WalStatus:
    level: Level
    state: str  # ok | stalled | no base backup
    stall_s: float
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0  # archived files (segments, .history, .backup)
    newest_segment: str | None = None
    last_archived: str | None = None  # the file committed last
    archived_at: datetime | None = None
    age_s: float | None = None
    newest_base: BaseBackup | None = None
    base_age_s: float | None = None
    base_backups: int = 0
    archiver: Archiver | None = None  # the server's view, when status could read it

    def to_json(self) -> dict[str, Any]:
        base = self.newest_base
        return {
            "level": self.level,
            "state": self.state,
            "reasons": self.reasons,
            "notes": self.notes,
            "stall_after_s": self.stall_s,
            "archived_files": self.files,
            "newest_segment": self.newest_segment,
            "last_archived": self.last_archived,
            "last_archived_at": self.archived_at.isoformat() if self.archived_at else None,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "base_backups": self.base_backups,
            "last_base_backup": base.name if base else None,
            "last_base_backup_at": base.started.isoformat() if base else None,
            "base_start_segment": base.start_segment if base else None,
            "base_age_s": None if self.base_age_s is None else round(self.base_age_s, 1),
            "archiver": self.archiver.to_json() if self.archiver else None,
        }


def read_wal_status(
    storage: LocalStorage,
    now: datetime,
    stall_s: float = DEFAULT_WAL_STALL_S,
    archiver: Archiver | None = None,
    notes: tuple[str, ...] = (),
) -> WalStatus | None:
    """None when the repository has neither archived WAL nor base backups and the server's
    archiver (when read) is not failing. ``notes``: the caller's, e.g. why the archiver could
    not be read."""
    names = wal.archived(storage)
    bases, bad = read_bases(storage)
    failing = archiver is not None and archiver.failing
    if not names and not bases and not bad and not failing:
        return None
    notes = (*notes, *(f"unreadable base backup record {key}" for key in bad))
    newest_base = max(bases, key=lambda b: (b.started, b.name), default=None)
    base_age = (now - newest_base.started).total_seconds() if newest_base else None
    segments = [n for n in names if wal.SEGMENT_RE.match(n)]
    newest_segment = segments[-1] if segments else None  # names sort by timeline, then position
    last, at = _last_archived(storage, names, newest_segment)
    age = max(0.0, (now - at).total_seconds()) if at else None
    level: Level = "ok"
    state = "ok"
    reasons: list[str] = []
    if age is not None and age > stall_s:
        level, state = ("critical" if age > 2 * stall_s else "warning"), "stalled"
        reasons.append(
            f"the newest WAL file ({last}) was archived {_minutes(age)} ago (stalled after "
            f"{_minutes(stall_s)}): check archive_command and pg_stat_archiver"
        )
    elif not names and (bases or bad):
        level, state = "critical", "stalled"
        reasons.append("base backups but no archived WAL: they cannot be recovered")
    if not bases and names:
        level = "critical" if level == "critical" else "warning"
        state = "stalled" if state == "stalled" else "no base backup"
        reasons.append("archived WAL but no base backup: 'safehold pitr base-backup' takes one")
    if archiver is not None and archiver.failing:
        level, state = "critical", "failing"
        reasons.insert(0, _failing(archiver))
    elif archiver is not None and archiver.mode == "off" and names:
        notes = (*notes, "archive_mode is off on the server: no new WAL is being archived")
    return WalStatus(
        level=level,
        state=state,
        stall_s=stall_s,
        reasons=reasons,
        notes=list(notes),
        files=len(names),
        newest_segment=newest_segment,
        last_archived=last,
        archived_at=at,
        age_s=age,
        newest_base=newest_base,
        base_age_s=base_age,
        base_backups=len(bases),
        archiver=archiver,
    )


def _failing(archiver: Archiver) -> str:
    def when(at: datetime | None) -> str:
        return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "never"

    last = archiver.last_archived_wal
    since = (
        f"last archived {last} at {when(archiver.last_archived_time)}"
        if last
        else ("nothing archived since the statistics were reset")
    )
    return (
        f"the server's WAL archiver is failing: {archiver.failed_count} failed attempt(s), the "
        f"last for {archiver.last_failed_wal} at {when(archiver.last_failed_time)}; {since}: "
        "the server log says why ('archive command failed'); 'safehold doctor' checks it"
    )


def _last_archived(
    storage: LocalStorage, names: list[str], newest_segment: str | None
) -> tuple[str | None, datetime | None]:
    """The file committed last. Segments arrive in order, so only the newest one and the few
    other files (.history, .backup, .partial) are looked at: no stat of every segment."""
    looked = [n for n in names if not wal.SEGMENT_RE.match(n)]
    if newest_segment is not None:
        looked.append(newest_segment)
    best: tuple[float, str] | None = None
    for name in looked:
        try:
            mtime = storage.path(wal.sum_key(name)).stat().st_mtime
        except FileNotFoundError:
            continue  # removed since the listing (a prune)
        if best is None or mtime > best[0]:
            best = (mtime, name)
    if best is None:
        return None, None
    return best[1], datetime.fromtimestamp(best[0], UTC)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
