"""Restore drills: really restore backups into scratch space, check them, time them, clean up.

A database goes into a scratch database (``<name>_safehold_drill_<time>``) on the configured
server, or on any server the caller hands in (the CLI's ``--sandbox`` starts a throwaway local
cluster); a volume goes into a scratch folder inside the repository. The restore paths are the
real ones (sha256 first, staging, rows per table / file count and bytes against the manifest),
so a drill proves what a restore would do, and never touches live data: the scratch names are
new, and the live database's name is refused as a scratch target.

Each drill is recorded in ``.safehold/drills/<id>.json`` with its outcome and the measured
recovery time, failed ones too (then the error is raised after recording).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ... import catalog, naming
from ..._version import __version__
from ...crypto import DecryptionKey
from ...errors import IntegrityError, SafeholdError, UsageError
from ...model import Event, EventSink, Manifest, null_sink, parse_time
from ...sources import pg_admin
from ...sources.postgres import PgTarget
from ...storage import LocalStorage, Storage
from ..database.restore import RestoreOptions, restore_database
from ..volumes.folder import restore_tree

DRILLS_DIR = naming.DRILLS_DIR
Outcome = Literal["ok", "failed"]


@dataclass(frozen=True)
class DrillRecord:
    id: str
    subject: str  # what was asked: an artifact name, "set <id>" or "latest"
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    recovery_s: float  # time spent restoring (what an operator would wait for)
    members: list[dict[str, Any]] = field(default_factory=list)
    where: str = ""
    error: str | None = None
    set_id: str | None = None
    tool_version: str = __version__
    # A full-system rehearsal (drill_system.py): its timed steps, and recovery_s is the whole
    # system's measured recovery time, judged against ``objective_s`` (the full-system RTO).
    scope: str = "backups"
    steps: list[dict[str, Any]] = field(default_factory=list)
    objective_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "outcome": self.outcome,
            "recovery_s": round(self.recovery_s, 3),
            "members": self.members,
            "where": self.where,
            "error": self.error,
            "set_id": self.set_id,
            "tool_version": self.tool_version,
            "scope": self.scope,
            "steps": self.steps,
            "objective_s": self.objective_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DrillRecord:
        return cls(
            id=str(data["id"]),
            subject=str(data["subject"]),
            started_at=parse_time(data["started_at"]),
            finished_at=parse_time(data["finished_at"]),
            outcome=data["outcome"],
            recovery_s=float(data["recovery_s"]),
            members=list(data.get("members", [])),
            where=str(data.get("where", "")),
            error=data.get("error"),
            set_id=data.get("set_id"),
            tool_version=str(data.get("tool_version", "")),
            scope=str(data.get("scope", "backups")),
            steps=list(data.get("steps", [])),
            objective_s=data.get("objective_s"),
        )

    def covers(self, kind: str, target: str) -> bool:
        return any(m.get("kind") == kind and m.get("target") == target for m in self.members)


def new_drill_id(started: datetime) -> str:
    return naming.stamp(started) + f"-{started.microsecond:06d}"


def write_drill(storage: LocalStorage, record: DrillRecord) -> None:
    """Record a drill (failed ones too) where ``status`` and ``report`` read them."""
    body = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.ensure()
    storage.put_bytes(f"{DRILLS_DIR}/{record.id}.json", body)


def read_drills(storage: Storage) -> list[DrillRecord]:
    """Every recorded drill, oldest first (unreadable records are skipped: they prove nothing)."""
    found = []
    for key in storage.list(DRILLS_DIR):
        if key.endswith(".json"):
            try:
                found.append(DrillRecord.from_json(json.loads(storage.read_bytes(key))))
            except (ValueError, KeyError, TypeError):
                continue
    return sorted(found, key=lambda d: (d.started_at, d.id))


def drill_members(storage: LocalStorage, subject: str) -> tuple[list[Manifest], str | None]:
    """``latest``: the newest good backup of every target; ``set:<id|latest>``: a set's members;
    anything else: one artifact name."""
    records = catalog.scan(storage)
    if subject.startswith("set:"):
        ref = subject.removeprefix("set:")
        sets = catalog.read_sets(storage)
        by_name = {r.name: r for r in records}
        if ref == "latest":
            good = [s for s in sets if catalog.set_status(s, by_name) == "ok"]
            chosen = good[-1] if good else None
        else:
            chosen = next((s for s in sets if s.id == ref), None)
        if chosen is None:
            raise UsageError(f"no backup set {ref!r}", hint="'safehold list --sets' shows the sets")
        manifests = [catalog.read_manifest(storage, m) for m in chosen.members]
        for member, manifest in zip(chosen.members, manifests, strict=True):
            _check_identity(storage, member, manifest)
        # A dump's globals are applied by that dump's drill, not drilled on their own.
        return [m for m in manifests if m is not None and m.kind != "globals"], chosen.id
    if subject == "latest":
        newest = [r.manifest for r in catalog.newest_by_target(records).values() if r.manifest]
        if not newest:
            raise UsageError(
                f"no good backup to drill in {storage.description}",
                hint="run 'safehold backup' first",
            )
        return sorted(newest, key=lambda m: (m.kind != "database", m.target)), None
    named = next((r.manifest for r in records if r.name == subject), None)
    if named is None:
        raise UsageError(
            f"no backup named {subject!r} with a manifest",
            hint=f"'safehold list' shows the backups in {storage.description}",
        )
    _check_identity(storage, subject, named)
    return [named], named.set_id


def _check_identity(storage: LocalStorage, name: str, manifest: Manifest | None) -> None:
    """A drill restores what the manifest names: one that names another backup would drill
    (and pass with) that one instead of ``name``."""
    if manifest is None:
        return
    size = storage.size(name) if storage.exists(name) else None
    if problem := catalog.identity_problem(name, manifest, size):
        raise catalog.identity_error(name, problem)


def drill(
    storage: LocalStorage,
    subject: str,
    *,
    server: PgTarget | None,
    live_database: str | None = None,
    where: str = "",
    jobs: int = 0,
    sink: EventSink = null_sink,
    key: DecryptionKey | None = None,
) -> DrillRecord:
    """Restore ``subject``'s backups into scratch space and record the result. ``server``: where
    scratch databases go (needed when a database backup is drilled); ``live_database``: a name
    the drill must never use."""
    started = datetime.now(UTC)
    drill_id = new_drill_id(started)
    results: list[dict[str, Any]] = []
    error: SafeholdError | None = None
    try:
        members, set_id = drill_members(storage, subject)
    except IntegrityError as exc:
        # A backup that is not what its name says fails the drill, recorded like any failure.
        members, set_id, error = [], None, exc
        results.append({"artifact": subject, "outcome": "failed", "error": exc.message})
    for manifest in members:
        try:
            results.append(_one(storage, manifest, server, live_database, jobs, sink, key))
        except SafeholdError as exc:
            error = exc
            results.append(
                {
                    "artifact": manifest.artifact,
                    "kind": manifest.kind,
                    "target": manifest.target,
                    "outcome": "failed",
                    "error": exc.message,
                }
            )
            break
    record = DrillRecord(
        id=drill_id,
        subject=subject if not subject.startswith("set:") else f"set {set_id}",
        started_at=started,
        finished_at=datetime.now(UTC),
        outcome="failed" if error else "ok",
        recovery_s=sum(float(r.get("seconds", 0.0)) for r in results),
        members=results,
        where=where or (server.where() if server else "scratch folders"),
        error=error.message if error else None,
        set_id=set_id,
    )
    write_drill(storage, record)
    if error is not None:
        error.message = f"restore drill failed: {error.message}"
        raise error
    sink(
        Event(
            "drill",
            f"drill of {record.subject} passed: {len(results)} backup(s) restored and checked "
            f"in {record.recovery_s:.1f}s",
            data={"drill": drill_id, "recovery_s": record.recovery_s},
        )
    )
    return record


def _one(
    storage: LocalStorage,
    manifest: Manifest,
    server: PgTarget | None,
    live_database: str | None,
    jobs: int,
    sink: EventSink,
    key: DecryptionKey | None = None,
) -> dict[str, Any]:
    base = {"artifact": manifest.artifact, "kind": manifest.kind, "target": manifest.target}
    if manifest.kind == "database":
        if server is None:
            raise UsageError("drilling a database backup needs a server (or --sandbox)")
        return base | _drill_database(storage, manifest, server, live_database, jobs, sink, key)
    return base | _drill_volume(storage, manifest, sink, key)


def _drill_database(
    storage: LocalStorage,
    manifest: Manifest,
    server: PgTarget,
    live_database: str | None,
    jobs: int,
    sink: EventSink,
    key: DecryptionKey | None,
) -> dict[str, Any]:
    scratch = pg_admin.db_name_with_suffix(
        manifest.target, f"_safehold_drill_{naming.stamp(datetime.now(UTC))}"
    )
    if scratch in (live_database, server.dbname, manifest.target):
        raise UsageError(f"refusing to drill into {scratch!r}: it is a live database name")
    with pg_admin.admin(server) as conn:
        if pg_admin.exists(conn, scratch):
            raise UsageError(f"the scratch database {scratch!r} exists already; drop it first")
    sink(Event("drill", f"restoring {manifest.artifact} into scratch database {scratch!r}"))
    began = time.monotonic()
    try:
        result = restore_database(
            server,
            storage,
            manifest.artifact,
            RestoreOptions.scratch(scratch, jobs=jobs, decryption=key),
            sink=sink,
        )
        seconds = time.monotonic() - began
        expected = manifest.tables
        if expected and result.tables != expected:
            raise IntegrityError(
                f"drill of {manifest.artifact}: restored rows differ from the manifest",
                hint="the backup is not trustworthy; take a new one and verify it",
            )
    finally:
        with pg_admin.admin(server) as conn:
            if pg_admin.exists(conn, scratch):
                pg_admin.drop(conn, scratch)
    return {
        "outcome": "ok",
        "seconds": round(seconds, 3),
        "scratch": scratch,
        "tables": len(result.tables),
        "rows": sum(result.tables.values()),
    }


def _drill_volume(
    storage: LocalStorage, manifest: Manifest, sink: EventSink, key: DecryptionKey | None
) -> dict[str, Any]:
    storage.ensure()
    scratch_root = storage.path(naming.TMP_DIR)
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"drill-{manifest.target}-", dir=scratch_root))
    sink(Event("drill", f"restoring {manifest.artifact} into scratch folder {scratch}"))
    began = time.monotonic()
    try:
        facts = restore_tree(
            storage, manifest.artifact, scratch, target_name=manifest.target, sink=sink, key=key
        )
        seconds = time.monotonic() - began
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "outcome": "ok",
        "seconds": round(seconds, 3),
        "files": facts.files,
        "bytes": facts.bytes,
    }
