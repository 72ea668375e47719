"""Status against the recovery objectives: for the database and each volume, the last good
backup and its age, the size trend, the last verify and the last drill with its measured
recovery time, judged like a monitoring plugin (ok / warning / critical).

The rules, per target:
- no good backup at all: critical;
- newest good backup older than its RPO plus the grace: warning; older than twice the RPO
  plus the grace: critical (the RPO and grace per target: ``Objectives.rpo``/``grace``; the
  settings derive an RPO nobody set from how often the schedule backs the target up);
- its last verify failed, or the newest backup file is damaged or missing: critical;
- the newest backup is missing from a location that should get every backup: warning;
- the last drill that covered it failed: critical; it took longer than the target's RTO, or is
  older than ``DRILL_MAX_AGE``: warning; never drilled: a note (recoverability unproven).
Plus, when the repository has archived WAL or base backups, the PITR line (``status_wal``),
and the full-system line: the last DR rehearsal against the full-system RTO (``status_rehearsal``).
A reading is a pure function of the repository and ``now``, so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ... import catalog
from ...model import BACKUP_KINDS, BackupRecord, Kind, Objectives
from ...storage import LocalStorage, Storage
from ..checks.drill import DrillRecord, read_drills
from ..checks.verify import VerifyResult, read_verify
from ..pitr.status import DEFAULT_WAL_STALL_S, LEVELS, Level, WalStatus, read_wal_status
from .rehearsal import RehearsalStatus, read_rehearsal

DRILL_MAX_AGE = timedelta(days=35)  # "monthly", with a few days' grace


@dataclass(frozen=True)
class TargetStatus:
    kind: Kind
    target: str
    level: Level
    reasons: list[str]
    notes: list[str]
    newest: BackupRecord | None = None
    age_s: float | None = None
    good_backups: int = 0
    previous_size: int | None = None
    verify: VerifyResult | None = None
    drill: DrillRecord | None = None
    drill_s: float | None = None  # this target's share of that drill
    rpo_s: float | None = None  # this target's RPO, and the grace it gets past it
    grace_s: float = 0.0

    @property
    def breached(self) -> bool:
        """No good backup, or the newest is later than the RPO and its grace allow."""
        if self.age_s is None:
            return True
        return self.rpo_s is not None and self.age_s > self.rpo_s + self.grace_s

    def to_json(self) -> dict[str, Any]:
        newest = self.newest
        manifest = newest.manifest if newest else None
        return {
            "kind": self.kind,
            "target": self.target,
            "level": self.level,
            "reasons": self.reasons,
            "notes": self.notes,
            "last_backup": newest.name if newest else None,
            "last_backup_at": newest.created.isoformat() if newest else None,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "rpo_s": self.rpo_s,
            "grace_s": round(self.grace_s, 1),
            "size": newest.size if newest else None,
            "previous_size": self.previous_size,
            "duration_s": round(manifest.duration_s, 3) if manifest else None,
            "good_backups": self.good_backups,
            "last_verify": self.verify.to_json() if self.verify else None,
            "last_drill": None
            if self.drill is None
            else {
                "id": self.drill.id,
                "at": self.drill.started_at.isoformat(),
                "outcome": self.drill.outcome,
                "recovery_s": self.drill_s,
            },
        }


@dataclass(frozen=True)
class StatusReport:
    checked_at: datetime
    objectives: Objectives
    targets: list[TargetStatus]
    notes: list[str] = field(default_factory=list)
    wal: WalStatus | None = None
    rehearsal: RehearsalStatus | None = None

    @property
    def level(self) -> Level:
        levels = [t.level for t in self.targets] + ([self.wal.level] if self.wal else [])
        levels += [self.rehearsal.level] if self.rehearsal else []
        worst = max((LEVELS.index(level) for level in levels), default=2)
        return LEVELS[worst]

    @property
    def exit_code(self) -> int:
        return LEVELS.index(self.level)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "level": self.level,
            "objectives": self.objectives.to_json(),
            "targets": [t.to_json() for t in self.targets],
            "notes": self.notes,
            "wal": self.wal.to_json() if self.wal else None,
            "full_system": self.rehearsal.to_json() if self.rehearsal else None,
        }


def read_status(
    storage: Storage,
    *,
    now: datetime,
    objectives: Objectives,
    database: str | tuple[str, ...] | None,
    volumes: tuple[str, ...] = (),
    copies: dict[str, list[str]] | None = None,
    expected: tuple[str, ...] = (),
    wal_stall_s: float = DEFAULT_WAL_STALL_S,
    snapshots: Sequence[BackupRecord] = (),
) -> StatusReport:
    """``database`` and ``volumes`` are the targets that must have backups (configured); every
    target with backups in the repository is reported too; ``wal_stall_s``: the PITR line's
    ``objectives.wal_stall_minutes``; ``snapshots``: the chunk store's snapshots as records
    (``format = "chunked"``), judged with the files. A repository read elsewhere (a location,
    ``status --fleet``) gets no PITR line: its own host judges its archive."""
    records = sorted([*catalog.scan(storage), *snapshots], key=lambda r: r.created)
    drills = read_drills(storage)
    wanted: dict[tuple[Kind, str], None] = {}
    # Several databases ([database] names): each its own target, with its own RPO.
    for name in (database,) if isinstance(database, str) else database or ():
        wanted[("database", name)] = None
    for volume in volumes:
        wanted[("volume", volume)] = None
    for record in records:
        # Safety copies and globals are not a target's backups: never its newest.
        if record.manifest is not None and record.kind in BACKUP_KINDS:
            wanted[(record.kind, record.manifest.target)] = None
    targets = [
        _judge(storage, kind, target, records, drills, now, objectives, copies or {}, expected)
        for kind, target in wanted
    ]
    pitr = None
    if isinstance(storage, LocalStorage):
        pitr = read_wal_status(storage, now, wal_stall_s)
    notes = []
    if not targets and pitr is None:
        notes.append("nothing configured and no backups: run 'safehold backup'")
    rehearsal = read_rehearsal(drills, now, objectives) if targets else None
    return StatusReport(now, objectives, targets, notes, pitr, rehearsal)


def _judge(
    storage: Storage,
    kind: Kind,
    target: str,
    records: list[BackupRecord],
    drills: list[DrillRecord],
    now: datetime,
    goals: Objectives,
    copies: dict[str, list[str]],
    expected: tuple[str, ...],
) -> TargetStatus:
    mine = [r for r in records if r.kind == kind and r.manifest and r.manifest.target == target]
    good = [r for r in mine if r.status == "ok"]
    reasons: list[tuple[Level, str]] = []
    notes: list[str] = []
    newest = good[-1] if good else None
    age = (now - newest.created).total_seconds() if newest else None
    rpo = goals.rpo(kind, target)
    grace = goals.grace(rpo)
    allowed = f"RPO {_hours(rpo)}" + (f" + {_hours(grace)} grace" if grace else "")
    if newest is None:
        reasons.append(("critical", "no good backup"))
    elif age is not None and age > 2 * rpo + grace:
        reasons.append(("critical", f"newest backup is {_hours(age)} old ({allowed})"))
    elif age is not None and age > rpo + grace:
        reasons.append(("warning", f"newest backup is {_hours(age)} old ({allowed})"))
    if mine and mine[-1].status in ("damaged", "missing"):
        reasons.append(("critical", f"the newest backup file {mine[-1].name} is {mine[-1].status}"))
    if newest is not None:
        lacking = [loc for loc in expected if loc not in copies.get(newest.name, [])]
        if lacking:
            reasons.append(("warning", f"newest backup not copied to {', '.join(lacking)}"))
    verify = read_verify(storage, newest.name) if newest else None
    if verify is not None and not verify.ok:
        reasons.append(("critical", f"verify of {verify.artifact} failed: {verify.error}"))
    elif newest is not None and verify is None:
        notes.append(f"{newest.name} was never verified")
    drill = next((d for d in reversed(drills) if d.covers(kind, target)), None)
    drill_s: float | None = None
    if drill is None:
        notes.append("never drilled: recoverability unproven ('safehold drill')")
    else:
        member = next(m for m in drill.members if m["kind"] == kind and m["target"] == target)
        drill_s = float(member.get("seconds", 0.0)) if member.get("outcome") == "ok" else None
        if drill.outcome != "ok" and member.get("outcome") != "ok":
            reasons.append(("critical", f"the last drill failed: {drill.error}"))
        elif drill_s is not None and drill_s > goals.rto(kind):
            reasons.append(
                (
                    "warning",
                    f"the last drill took {drill_s:.0f}s, over the RTO of "
                    f"{goals.rto(kind) / 60:.0f} min",
                )
            )
        if now - drill.started_at > DRILL_MAX_AGE:
            reasons.append(
                ("warning", f"the last drill is {(now - drill.started_at).days} days old")
            )
    level = max((LEVELS.index(lvl) for lvl, _ in reasons), default=0)
    previous = good[-2].size if len(good) > 1 else None
    return TargetStatus(
        kind=kind,
        target=target,
        level=LEVELS[level],
        reasons=[text for _, text in reasons],
        notes=notes,
        newest=newest,
        age_s=age,
        good_backups=len(good),
        previous_size=previous,
        verify=verify,
        drill=drill,
        drill_s=drill_s,
        rpo_s=rpo,
        grace_s=grace,
    )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"
