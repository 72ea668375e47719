"""The full-system line of ``status``: the newest DR rehearsal (``drill --full-system``), its
measured recovery time against the full-system RTO.

- it failed: critical (the whole system was not shown to come back);
- it took longer than the RTO, or is older than ``REHEARSAL_MAX_AGE``: warning;
- never rehearsed: a note only, since a rehearsal is a quarterly job an operator may not
  have scheduled (each target's own drill already carries the monthly proof).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ...model import Objectives
from ..checks.drill import DrillRecord
from ..pitr.status import LEVELS, Level

FULL_SYSTEM = "full-system"
REHEARSAL_MAX_AGE = timedelta(days=95)  # "quarterly", with a few days' grace


@dataclass(frozen=True)
class RehearsalStatus:
    level: Level
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drill: DrillRecord | None = None
    objective_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        drill = self.drill
        return {
            "level": self.level,
            "reasons": self.reasons,
            "notes": self.notes,
            "objective_s": self.objective_s,
            "last_rehearsal": None
            if drill is None
            else {
                "id": drill.id,
                "at": drill.started_at.isoformat(),
                "outcome": drill.outcome,
                "set": drill.set_id,
                "recovery_s": round(drill.recovery_s, 3) if drill.outcome == "ok" else None,
                "steps": drill.steps,
            },
        }


def read_rehearsal(
    drills: list[DrillRecord], now: datetime, objectives: Objectives
) -> RehearsalStatus:
    """Judge the newest full-system drill of ``drills`` (oldest first, as ``read_drills``)."""
    objective = objectives.rto_full_s
    drill = next((d for d in reversed(drills) if d.scope == FULL_SYSTEM), None)
    if drill is None:
        note = "never rehearsed: the full-system RTO is unproven ('safehold drill --full-system')"
        return RehearsalStatus("ok", notes=[note], objective_s=objective)
    reasons: list[tuple[Level, str]] = []
    if drill.outcome != "ok":
        reasons.append(("critical", f"the last full-system rehearsal failed: {drill.error}"))
    elif drill.recovery_s > objective:
        reasons.append(
            (
                "warning",
                f"the last full-system rehearsal took {drill.recovery_s:.0f}s, over the RTO of "
                f"{objective:.0f}s",
            )
        )
    if now - drill.started_at > REHEARSAL_MAX_AGE:
        age = (now - drill.started_at).days
        reasons.append(("warning", f"the last full-system rehearsal is {age} days old"))
    level: Level = max((lvl for lvl, _ in reasons), key=LEVELS.index, default="ok")
    return RehearsalStatus(level, [text for _, text in reasons], [], drill, objective)
