"""The runs line of ``safehold status``: what the run records (``runs``) say about the latest
run of each command, so that a failed run is seen when it happens and not only once its
consequence (an old backup) breaches the RPO.

The rules, per command (backup, verify, drill, prune, copy), on its newest recorded run:
- it failed or was interrupted: warning, naming the error and how many runs in a row failed
  (the RPO rules turn an old newest backup critical on their own);
- it is still ``running`` but its process is gone on this host (killed): warning.
A failed ``restore`` is a note for a week: it is an operator's act that no schedule repeats,
so nothing would ever clear a warning. A later successful run of the same command clears it:
a failed weekly ``backup --all`` is cleared by the next daily ``backup``, and the volumes' own
RPO rule still judges whether they have a recent backup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ...storage import LocalStorage
from ..pitr.status import LEVELS, Level
from ..runs import RunRecord, read_runs

JUDGED = ("backup", "verify", "drill", "prune", "copy")
RESTORE_NOTE_FOR = timedelta(days=7)


@dataclass(frozen=True)
class RunsStatus:
    level: Level
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    last: dict[str, RunRecord] = field(default_factory=dict)  # command -> its newest run

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "reasons": self.reasons,
            "notes": self.notes,
            "last": {command: run.to_json() for command, run in self.last.items()},
        }


def read_runs_status(storage: LocalStorage, now: datetime) -> RunsStatus | None:
    """None when the repository holds no run record."""
    records = read_runs(storage)
    if not records:
        return None
    last: dict[str, RunRecord] = {}
    for record in records:  # oldest first: the newest of each command wins
        last[record.command] = record
    reasons: list[tuple[Level, str]] = []
    notes: list[str] = []
    for command in JUDGED:
        run = last.get(command)
        if run is None:
            continue
        if run.failed:
            mine = [r for r in records if r.command == command]
            streak = next((i for i, r in enumerate(reversed(mine)) if not r.failed), len(mine))
            reasons.append(("warning", _failure(run, streak)))
        elif run.dead():
            gone = f"the last {command} run (pid {run.pid}, started {_at(run)}) did not finish"
            reasons.append(("warning", gone + ": its process is gone (killed?)"))
    restore = last.get("restore")
    if restore is not None and restore.failed and now - restore.started_at < RESTORE_NOTE_FOR:
        notes.append(_failure(restore, 1))
    level = max((LEVELS.index(lvl) for lvl, _ in reasons), default=0)
    return RunsStatus(LEVELS[level], [text for _, text in reasons], notes, last)


def _failure(run: RunRecord, streak: int) -> str:
    what = "was interrupted" if run.outcome == "interrupted" else "failed"
    runs = f"the last {streak} {run.command} runs" if streak > 1 else f"the last {run.command} run"
    verb = "failed" if streak > 1 else what
    error = f": {run.error}" if run.error else ""
    return f"{runs} {verb} ('{run.command_line}' at {_at(run)}, exit {run.exit_code}){error}"


def _at(run: RunRecord) -> str:
    return run.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
