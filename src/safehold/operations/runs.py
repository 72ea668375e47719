"""Run records: one JSON file per run of backup, verify, drill, prune, copy and restore, failed
runs included, in ``.safehold/runs/<UTC stamp>-<pid>.json``. A failed backup leaves no artifact
and no manifest; without its record, status and the report could only notice the silence later,
through the RPO.

A record is written twice: ``running`` when the run starts, its outcome when it ends (each write
atomic). A record still ``running`` whose process is gone on this host is a run that was killed
(SIGKILL, OOM, power loss) before it could say so. Records older than ``MAX_AGE`` are removed
when a new one is written. A record is advice: an unreadable one is skipped, never an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .. import naming
from .._version import __version__
from ..errors import SafeholdError
from ..model import parse_time
from ..storage import LocalStorage

RUNS_DIR = naming.RUNS_DIR
MAX_AGE = timedelta(days=90)
RECORD_FORMAT = 1
# The commands that leave a record: the ones that do something to or with the backups.
RECORDED = ("backup", "verify", "drill", "prune", "copy", "restore")
Outcome = Literal["running", "ok", "failed", "interrupted"]


@dataclass(frozen=True)
class RunRecord:
    id: str
    command: str  # "backup", "restore"
    args: tuple[str, ...]  # as typed, secrets masked: ("--all",)
    started_at: datetime
    outcome: Outcome = "running"
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    hint: str | None = None
    error_type: str | None = None
    produced: tuple[str, ...] = ()  # artifact names and set ids this run wrote
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = __version__

    @property
    def command_line(self) -> str:
        return " ".join((self.command, *self.args))

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "interrupted")

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def dead(self) -> bool:
        """Still ``running`` although its process is gone (only knowable on its own host)."""
        if self.outcome != "running" or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False

    def to_json(self) -> dict[str, Any]:
        took = self.duration_s
        return {
            "format": RECORD_FORMAT,
            "id": self.id,
            "command": self.command,
            "args": list(self.args),
            "command_line": self.command_line,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "duration_s": None if took is None else round(took, 3),
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "error": self.error,
            "hint": self.hint,
            "error_type": self.error_type,
            "produced": list(self.produced),
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        finished = data.get("finished_at")
        return cls(
            id=str(data["id"]),
            command=str(data["command"]),
            args=tuple(str(a) for a in data.get("args", ())),
            started_at=parse_time(data["started_at"]),
            outcome=data["outcome"],
            finished_at=parse_time(finished) if finished else None,
            exit_code=data.get("exit_code"),
            error=data.get("error"),
            hint=data.get("hint"),
            error_type=data.get("error_type"),
            produced=tuple(str(p) for p in data.get("produced", ())),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            version=str(data.get("version", "")),
        )


def start_run(command: str, args: tuple[str, ...], now: datetime | None = None) -> RunRecord:
    started = now or datetime.now(UTC)
    # Microseconds too: two runs of one process (a library caller) never share a name.
    run_id = f"{naming.stamp(started)}_{started.microsecond:06d}-{os.getpid()}"
    return RunRecord(run_id, command, args, started)


def finish_run(
    record: RunRecord,
    *,
    outcome: Outcome,
    exit_code: int,
    error: str | None = None,
    hint: str | None = None,
    error_type: str | None = None,
    produced: tuple[str, ...] = (),
) -> RunRecord:
    return replace(
        record,
        outcome=outcome,
        finished_at=datetime.now(UTC),
        exit_code=exit_code,
        error=error,
        hint=hint,
        error_type=error_type,
        produced=produced,
    )


def write_run(storage: LocalStorage, record: RunRecord, *, create: bool = True) -> None:
    """Write (or overwrite) ``record`` atomically, then remove records past ``MAX_AGE``.
    ``create=False``: only into a repository folder that exists already."""
    if not create and not storage.root.is_dir():
        raise SafeholdError(f"no repository folder {storage.root}: the run record is not written")
    body = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(run_key(record.id), body)
    prune_runs(storage, datetime.now(UTC) - MAX_AGE)


def run_key(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}.json"


def prune_runs(storage: LocalStorage, before: datetime) -> list[str]:
    """Remove the records of runs started before ``before`` (by the stamp in their name), and
    the temp files of records whose writer was killed."""
    removed = storage.remove_stale_partials(RUNS_DIR)
    for key in storage.list(RUNS_DIR):
        stamp = key.rsplit("/", 1)[-1][: len("YYYYmmdd_HHMMSS")]
        try:
            started = datetime.strptime(stamp, naming.STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue  # not a record of ours: leave it
        if started < before:
            with contextlib.suppress(SafeholdError):  # the next write tries again
                storage.delete(key)
                removed.append(key)
    return removed


def read_runs(storage: LocalStorage) -> list[RunRecord]:
    """Every run record, oldest first; unreadable ones are skipped."""
    found = []
    for key in storage.list(RUNS_DIR):
        if not key.endswith(".json"):
            continue
        try:
            found.append(RunRecord.from_json(json.loads(storage.read_bytes(key))))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(found, key=lambda r: (r.started_at, r.id))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
