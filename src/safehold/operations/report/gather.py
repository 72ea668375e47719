"""What ``safehold report`` shows, gathered from a repository: every backup with its manifest,
the sets, drills and verify records, the RPO compliance of each target over the window, the
latest failures, and the current status reading. A pure function of the repository and ``now``
(like ``read_status``), so tests control the clock; drawing the page is ``report_page``'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ... import catalog, naming
from ...errors import UsageError
from ...model import BACKUP_KINDS, BackupRecord, BackupSet, Kind, Objectives
from ...storage import LocalStorage
from ..checks.drill import DrillRecord, read_drills
from ..checks.verify import VERIFY_DIR, VerifyResult, read_verify
from ..runs import RunRecord, read_runs
from .status import StatusReport, read_status

DEFAULT_DAYS = 30
Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class BackupPoint:
    """One backup artifact (with or without a manifest) as the charts and tables use it."""

    name: str
    kind: Kind
    target: str | None  # None: a file without a manifest belongs to no known target
    created: datetime
    size: int | None
    duration_s: float | None
    status: str
    set_id: str | None
    compression: str | None

    @classmethod
    def of(cls, record: BackupRecord) -> BackupPoint:
        m = record.manifest
        return cls(
            name=record.name,
            kind=record.kind,
            target=m.target if m else None,
            created=record.created,
            size=record.size if record.size is not None else (m.size if m else None),
            duration_s=m.duration_s if m else None,
            status=record.status,
            set_id=m.set_id if m else None,
            compression=m.compression if m else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "created": _iso(self.created),
            "size": self.size,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "status": self.status,
            "set_id": self.set_id,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class Failure:
    at: datetime
    what: str  # backup, verify, drill, set; a failed run: its command (prune, copy, ...)
    subject: str
    detail: str
    severity: Severity = "critical"

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "what": self.what,
            "subject": self.subject,
            "detail": self.detail,
            "severity": self.severity,
        }


@dataclass(frozen=True)
class RpoTrack:
    """Age of the newest good backup of one target over [start, end]: the segments between
    good backups (each with the backup it starts from), and the periods over the RPO."""

    kind: Kind
    target: str
    start: datetime
    end: datetime
    segments: list[tuple[datetime, datetime, datetime | None]]  # from, to, newest good backup
    over: list[tuple[datetime, datetime]]  # newest good backup older than the RPO
    longest_gap_s: float | None  # between consecutive good backups (and the last one to now)
    compliant_share: float | None  # of the time after the first good backup

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "from": _iso(self.start),
            "to": _iso(self.end),
            "over_rpo": [{"from": _iso(a), "to": _iso(b)} for a, b in self.over],
            "longest_gap_s": None if self.longest_gap_s is None else round(self.longest_gap_s),
            "compliant_share": None
            if self.compliant_share is None
            else round(self.compliant_share, 4),
        }


@dataclass(frozen=True)
class SetRow:
    id: str
    started_at: datetime
    duration_s: float | None
    members: int
    status: str  # ok, "member X damaged"..., or "incomplete" (no set record)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": _iso(self.started_at),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "members": self.members,
            "status": self.status,
        }


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    since: datetime
    days: int  # 0: the whole history
    repository: str
    objectives: Objectives
    status: StatusReport
    targets: list[tuple[Kind, str]]
    backups: list[BackupPoint]  # in the window, oldest first
    sets: list[SetRow]
    drills: list[DrillRecord]
    verifies: list[VerifyResult]
    failures: list[Failure]  # newest first
    rpo: list[RpoTrack]

    @property
    def empty(self) -> bool:
        return not (self.backups or self.drills or self.verifies or self.rpo_has_data)

    @property
    def rpo_has_data(self) -> bool:
        return any(t.longest_gap_s is not None for t in self.rpo)

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at),
            "window": {"from": _iso(self.since), "days": self.days},
            "repository": self.repository,
            "objectives": vars(self.objectives),
            "status": self.status.to_json(),
            "targets": [{"kind": k, "target": t} for k, t in self.targets],
            "backups": [b.to_json() for b in self.backups],
            "sets": [s.to_json() for s in self.sets],
            "drills": [d.to_json() for d in self.drills],
            "verifies": [v.to_json() for v in self.verifies],
            "failures": [f.to_json() for f in self.failures],
            "rpo": [t.to_json() for t in self.rpo],
        }


def gather_report(
    storage: LocalStorage,
    *,
    now: datetime,
    objectives: Objectives,
    database: str | tuple[str, ...] | None,
    volumes: tuple[str, ...] = (),
    days: int = DEFAULT_DAYS,
    snapshots: Sequence[BackupRecord] = (),
) -> Report:
    """Everything the page shows. ``days``: the window (0 = the whole history); ``database``
    and ``volumes``: configured targets, reported even without backups (as in status);
    ``snapshots``: the chunk store's, as records (as in status)."""
    if days < 0:
        raise UsageError(f"--days must be 0 (everything) or more, not {days}")
    status = read_status(
        storage,
        now=now,
        objectives=objectives,
        database=database,
        volumes=volumes,
        snapshots=snapshots,
    )
    records = sorted([*catalog.scan(storage), *snapshots], key=lambda r: r.created)
    drills = read_drills(storage)
    verifies = read_all_verifies(storage)
    if days:
        since = now - timedelta(days=days)
    else:
        moments = [r.created for r in records] + [d.started_at for d in drills]
        since = min(moments, default=now - timedelta(days=1))
    targets: list[tuple[Kind, str]] = [(t.kind, t.target) for t in status.targets]
    sets = _sets(storage, records)
    goods = {(k, t): _good_times(records, k, t) for k, t in targets}
    # The timelines share one start: the window's, or shortly before the first good backup.
    firsts = [g[0] for g in goods.values() if g]
    track_from = since
    if firsts and min(firsts) > since:
        track_from = max(since, min(firsts) - (now - min(firsts)) * 0.05)
    return Report(
        generated_at=now,
        since=since,
        days=days,
        repository=storage.description,
        objectives=objectives,
        status=status,
        targets=targets,
        # A target's backups only: a dump's globals and pre-restore safety copies are not.
        backups=[
            BackupPoint.of(r)
            for r in records
            if r.kind in BACKUP_KINDS and since <= r.created <= now
        ],
        sets=[s for s in sets if since <= s.started_at <= now],
        drills=[d for d in drills if since <= d.started_at <= now],
        verifies=[v for v in verifies if since <= v.checked_at <= now],
        failures=[
            f
            for f in _failures(records, sets, drills, verifies, read_runs(storage))
            if since <= f.at <= now
        ],
        rpo=[rpo_track(k, t, goods[(k, t)], track_from, now, objectives) for k, t in targets],
    )


def read_all_verifies(storage: LocalStorage) -> list[VerifyResult]:
    """Every verify record (``.safehold/verify/<artifact>.json``), oldest first."""
    found = []
    for key in storage.list(VERIFY_DIR):
        if key.endswith(".json"):
            result = read_verify(storage, naming.artifact_of(key))
            if result is not None:
                found.append(result)
    return sorted(found, key=lambda v: (v.checked_at, v.artifact))


def rpo_track(
    kind: Kind,
    target: str,
    good: list[datetime],
    start: datetime,
    now: datetime,
    objectives: Objectives,
) -> RpoTrack:
    """``good``: when each good backup of the target was taken, oldest first; the track covers
    [start, now], the age at ``start`` counting from the newest good backup before it."""
    first_in = [t for t in good if start < t <= now]
    base = _newest_at(good, start)
    anchors = ([base] if base is not None else []) + first_in
    segments: list[tuple[datetime, datetime, datetime | None]] = []
    cursor = start
    for moment in first_in:
        if moment > cursor:
            segments.append((cursor, moment, base))
        cursor, base = moment, moment
    if now > cursor:
        segments.append((cursor, now, base))
    rpo = timedelta(seconds=objectives.rpo_s)
    over = []
    for begin, end, newest in segments:
        if newest is not None and max(begin, newest + rpo) < end:
            over.append((max(begin, newest + rpo), end))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(anchors)]
    if anchors:
        gaps.append((now - anchors[-1]).total_seconds())
    tracked = sum((e - b).total_seconds() for b, e, n in segments if n is not None)
    bad = sum((e - b).total_seconds() for b, e in over)
    return RpoTrack(
        kind,
        target,
        start,
        now,
        segments,
        over,
        longest_gap_s=max(gaps) if gaps else None,
        compliant_share=(1 - bad / tracked) if tracked > 0 else None,
    )


# --- pieces ------------------------------------------------------------------------------------


def _newest_at(good: list[datetime], moment: datetime) -> datetime | None:
    return max((t for t in good if t <= moment), default=None)


def _good_times(records: list[BackupRecord], kind: Kind, target: str) -> list[datetime]:
    return [
        r.created
        for r in records
        if r.kind == kind and r.status == "ok" and r.manifest and r.manifest.target == target
    ]


def _sets(storage: LocalStorage, records: list[BackupRecord]) -> list[SetRow]:
    """Complete sets with their status, and sets whose record is missing (a member failed)."""
    by_name = {r.name: r for r in records}
    complete: list[BackupSet] = catalog.read_sets(storage)
    rows = [
        SetRow(s.id, s.started_at, s.duration_s, len(s.members), catalog.set_status(s, by_name))
        for s in complete
    ]
    known = {s.id for s in complete}
    orphans: dict[str, list[BackupRecord]] = {}
    for record in records:
        set_id = record.manifest.set_id if record.manifest else None
        if set_id and set_id not in known:
            orphans.setdefault(set_id, []).append(record)
    for set_id, members in orphans.items():
        started = min(r.created for r in members)
        rows.append(SetRow(set_id, started, None, len(members), "incomplete"))
    return sorted(rows, key=lambda s: (s.started_at, s.id))


def _failures(
    records: list[BackupRecord],
    sets: list[SetRow],
    drills: list[DrillRecord],
    verifies: list[VerifyResult],
    runs: list[RunRecord],
) -> list[Failure]:
    found: list[Failure] = []
    for r in records:
        expected = r.manifest.size if r.manifest else None
        problems: dict[str, tuple[str, Severity]] = {
            "damaged": (f"damaged: {r.size} bytes, the manifest says {expected}", "critical"),
            "missing": ("missing: the manifest's file is gone", "critical"),
            "unverified/foreign": ("no manifest: not a backup safehold can vouch for", "warning"),
        }
        if r.status in problems:
            found.append(Failure(r.created, "backup", r.name, *problems[r.status]))
    for v in verifies:
        if v.outcome == "failed":
            detail = f"{v.level} verify failed: {v.error or 'no reason recorded'}"
            found.append(Failure(v.checked_at, "verify", v.artifact, detail))
        elif v.outcome == "unverifiable":
            found.append(
                Failure(v.checked_at, "verify", v.artifact, f"unverifiable: {v.error}", "warning")
            )
    for d in drills:
        if d.outcome != "ok":
            bad = [m for m in d.members if m.get("outcome") != "ok"]
            subject = ", ".join(str(m.get("artifact")) for m in bad) or d.subject
            found.append(Failure(d.finished_at, "drill", subject, f"drill failed: {d.error}"))
    for s in sets:
        if s.status == "incomplete":
            detail = "incomplete: no set record (a member failed); members stand as single backups"
            found.append(Failure(s.started_at, "set", s.id, detail))
        elif s.status != "ok":
            found.append(Failure(s.started_at, "set", s.id, s.status))
    found += _failed_runs(runs, found)
    return sorted(found, key=lambda f: (f.at, f.what, f.subject), reverse=True)


def _failed_runs(runs: list[RunRecord], recorded: list[Failure]) -> list[Failure]:
    """Failed runs, except those whose failure a record already shows (a verify or drill that
    failed on a backup writes its own record during the run): the rest, such as a backup that
    never reached the server, would otherwise be missing from the page."""
    found = []
    for run in runs:
        if not run.failed:
            continue
        end = run.finished_at or run.started_at
        if any(f.what == run.command and run.started_at <= f.at <= end for f in recorded):
            continue
        what = "interrupted" if run.outcome == "interrupted" else f"failed (exit {run.exit_code})"
        detail = f"run {what}: {run.error or 'no error recorded'}"
        found.append(Failure(run.started_at, run.command, run.command_line, detail))
    return found


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
