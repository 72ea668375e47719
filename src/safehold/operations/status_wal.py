"""The point-in-time-recovery line of ``safehold status``: how fresh the WAL archive is (the
achieved RPO for PITR: what a restore to "now" would lose) and the newest base backup.

The rules, when the repository holds archived WAL or base backups:
- the most recently archived file (by its sidecar's mtime: the moment ``wal-push`` committed
  it) is older than ``objectives.wal_stall_minutes``: ``stalled``, warning; older than twice
  that: ``stalled``, critical (as for an RPO breach);
- base backups but no archived WAL at all: ``stalled``, critical;
- archived WAL but no base backup: ``no base backup``, warning (there is nothing to replay onto).
Only ``LocalStorage`` has mtimes, which is where status reads. A pure function of the files and
``now`` otherwise, like the rest of status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ..storage import LocalStorage
from . import wal
from .pitr import BaseBackup
from .prune_pitr import read_bases

Level = Literal["ok", "warning", "critical"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical")
DEFAULT_WAL_STALL_S = 15 * 60.0


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
        }


def read_wal_status(
    storage: LocalStorage, now: datetime, stall_s: float = DEFAULT_WAL_STALL_S
) -> WalStatus | None:
    """None when the repository has neither archived WAL nor base backups."""
    names = wal.archived(storage)
    bases, bad = read_bases(storage)
    if not names and not bases and not bad:
        return None
    notes = [f"unreadable base backup record {key}" for key in bad]
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
    elif not names:
        level, state = "critical", "stalled"
        reasons.append("base backups but no archived WAL: they cannot be recovered")
    if not bases and names:
        level = "critical" if level == "critical" else "warning"
        state = "stalled" if state == "stalled" else "no base backup"
        reasons.append("archived WAL but no base backup: 'safehold pitr base-backup' takes one")
    return WalStatus(
        level=level,
        state=state,
        stall_s=stall_s,
        reasons=reasons,
        notes=notes,
        files=len(names),
        newest_segment=newest_segment,
        last_archived=last,
        archived_at=at,
        age_s=age,
        newest_base=newest_base,
        base_age_s=base_age,
        base_backups=len(bases),
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
