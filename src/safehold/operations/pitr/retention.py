"""Retention for point-in-time recovery as a pure function: base backups and archived WAL in,
keep/remove with a reason for each out. No I/O and no clock (``now`` is handed in).

The rules:

- **Base backups** are one more target, ``base``, under the same GFS policy as the logical
  backups (``retention.decide``: daily/weekly/monthly/yearly windows that have backups,
  keep_last, created after ``now`` kept). A base backup's time is its start time. The newest
  base backup is always kept. A base backup whose data file is missing or damaged is never a
  representative (the caller says which, by ``status``).
- **WAL segments** (``TTTTTTTTLLLLLLLLSSSSSSSS``, and ``.partial`` ones by their segment): a
  kept base backup needs every segment from its start segment on, to replay to now, on its own
  timeline and on every later one (those come after a timeline switch). So a segment is kept
  when some kept base backup needs it: its (log, seg) position is at or after that base's start
  segment, or its timeline is later than that base's. Removed: segments positioned before the
  start of every kept base backup, on that base's timeline or an older one. The reason names
  the oldest kept base backup (the one that starts first): ``before the oldest kept base backup
  base_X (starts at SEG)``.
- **``.history`` files** are always kept: they are tiny and recovery reads them to follow
  timelines (``recovery_target_timeline = 'latest'``).
- **``.backup`` files** (``<segment>.<offset>.backup``, the label of a base backup) follow
  their segment.
- **No base backup at all**: no WAL is removed; the archive waits for its first base backup.
- A name that is none of these is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ... import retention
from ...model import Status
from ...retention import Candidate, Decision, Policy
from .archive import SEGMENT_RE
from .base import BaseBackup

BASE_TARGET = "base"
KEEP_HISTORY = "timeline history: always kept"
KEEP_NO_BASE = "no base backup: WAL is kept until there is one to replay it onto"
KEEP_UNKNOWN = "not a WAL file name: left alone"


@dataclass(frozen=True)
class WalDecision:
    name: str
    keep: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep, "reason": self.reason}


@dataclass(frozen=True)
class PitrPlan:
    bases: list[Decision]  # in the order given (oldest first)
    wal: list[WalDecision]  # in the order given (sorted names)
    oldest_kept: BaseBackup | None  # the kept base backup that starts first

    @property
    def bases_removed(self) -> list[str]:
        return [d.candidate.name for d in self.bases if not d.keep]

    @property
    def wal_removed(self) -> list[str]:
        return [d.name for d in self.wal if not d.keep]


def segment_part(name: str) -> str | None:
    """The 24-hex segment a WAL file name belongs to; None for ``.history`` and unknown names."""
    head = name.split(".", 1)[0]
    if not SEGMENT_RE.match(head):
        return None
    rest = name[len(head) :]
    if rest in ("", ".partial") or (rest.endswith(".backup") and len(rest) == 16):
        return head
    return None


def position(segment: str) -> tuple[int, int]:
    """(log, seg): where a segment sits in the WAL stream, whatever its timeline."""
    return int(segment[8:16], 16), int(segment[16:24], 16)


def timeline(segment: str) -> int:
    return int(segment[:8], 16)


def needs(base: BaseBackup, segment: str) -> bool:
    """Does replaying ``base`` to now read ``segment``? (Conservative: a later timeline's
    segment is kept whatever its position, since a switch may have happened anywhere.)"""
    start = base.start_segment
    return position(segment) >= position(start) or timeline(segment) > timeline(start)


def decide(
    bases: Sequence[BaseBackup],
    wal_names: Sequence[str],
    policy: Policy,
    now: datetime,
    *,
    status: Mapping[str, Status] | None = None,
) -> PitrPlan:
    """Keep/remove with a reason for every base backup and every archived WAL file."""
    known = status or {}
    candidates = [
        Candidate(
            name=b.name,
            kind="base",
            target=BASE_TARGET,
            created=b.started,
            status=known.get(b.name, "ok"),
        )
        for b in bases
    ]
    decisions = retention.decide(candidates, policy, now) if candidates else []
    if bases:
        newest = max(range(len(bases)), key=lambda i: (bases[i].finished, bases[i].name))
        if not decisions[newest].keep:  # the rules above already keep it; this says so
            decisions[newest] = Decision(candidates[newest], True, ["newest base backup"])
    kept = [b for b, d in zip(bases, decisions, strict=True) if d.keep]
    oldest = min(kept, key=lambda b: (position(b.start_segment), b.started), default=None)
    return PitrPlan(decisions, [_wal_decision(n, kept, oldest) for n in wal_names], oldest)


def _wal_decision(name: str, kept: list[BaseBackup], oldest: BaseBackup | None) -> WalDecision:
    if name.endswith(".history"):
        return WalDecision(name, True, KEEP_HISTORY)
    segment = segment_part(name)
    if segment is None:
        return WalDecision(name, True, KEEP_UNKNOWN)
    if oldest is None:
        return WalDecision(name, True, KEEP_NO_BASE)
    user = next((b for b in kept if needs(b, segment)), None)
    if user is None:
        why = f"before the oldest kept base backup {oldest.name} (starts at {oldest.start_segment})"
        return WalDecision(name, False, why)
    label = " (backup label)" if name.endswith(".backup") else ""
    return WalDecision(name, True, f"needed by {user.name}{label}")
