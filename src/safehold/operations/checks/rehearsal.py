"""The full-system drill: the quarterly and annual disaster-recovery rehearsal, timed end to end
and isolated from production.

The newest good full-system set (or the one named) is restored into an isolated copy of the
system: its database into a scratch database ``<db>_drill_<id>`` (on the configured server, or
on a throwaway cluster with ``--sandbox``), each volume into a new scratch volume, each folder
into a scratch folder; the post-restore commands run against the scratch database; copies of
the application's running containers start on the restored data in the rehearsal's own
network (``drill_rehearsal``: internal, no published ports); the drill waits until they are
healthy. Every step is timed; their sum from the first restore to healthy is the measured
full-system recovery time, recorded (``.safehold/drills/``) against the full-system RTO. Then
everything the rehearsal created is removed, on success, on failure and on SIGTERM/SIGINT.

Production is never touched: no production container is stopped, no production volume or
database is written, and on the configured server no role is created or altered (``--roles
skip --no-owner``: a dump whose objects need roles that server lacks is refused; a sandbox
creates the dump's roles in its own cluster). Stopping the application is not part of the
rehearsal, so the measured time leaves out the stop a real restore begins with.

Before anything is created, the drill is journalled (``drill_rehearsal``, resolved by
``recovery_drill``): after a kill the next command removes what the rehearsal left.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import psycopg

from ... import _proc, catalog, naming
from ...crypto import DecryptionKey
from ...errors import IntegrityError, SafeholdError, UsageError
from ...model import Event, EventSink, Manifest, Objectives, null_sink
from ...sources import pg_admin
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from .. import journal
from ..database.globals import RolesMode
from ..database.restore import RestoreOptions, restore_database
from ..system.plan import choose_set, containers_to_stop
from ..system.steps import post_command
from ..volumes.docker import Access, restore_volume
from ..volumes.folder import restore_tree
from . import rehearsal_docker as rehearsal
from .drill import DrillRecord, new_drill_id, write_drill

_T = TypeVar("_T")
KIND = "drill_rehearsal"  # the journal entry of a rehearsal in progress
PURPOSE = "safehold drill --full-system"


@dataclass(frozen=True)
class SystemDrillOptions:
    set_ref: str = "latest"
    project: str | None = None  # compose project whose containers are copied (else: users)
    post_restore_cmds: tuple[str, ...] = ()
    health_timeout: float = 120.0
    jobs: int = 0
    access: Access = "auto"
    lock_timeout: float = 300.0
    objectives: Objectives = field(default_factory=Objectives)
    roles: RolesMode = "skip"  # "create" only where the server is the drill's own (sandbox)
    key: DecryptionKey | None = None
    where: str = ""
    sandbox_root: Path | None = None  # the throwaway cluster's folder, for the journal


def drill_system(
    storage: LocalStorage,
    *,
    client: docker.DockerClient,
    server: PgTarget | None,
    live_database: str | None,
    options: SystemDrillOptions,
    sink: EventSink = null_sink,
) -> DrillRecord:
    """Rehearse a whole-system recovery of a set; the record (written, failed ones too).
    ``server``: where the scratch database goes; ``live_database``: never used as scratch."""
    started = datetime.now(UTC)
    drill_id = new_drill_id(started).replace("-", "_")
    backup_set, why = choose_set(storage, options.set_ref, None)
    sink(Event("drill", f"full-system drill {drill_id} of {why}"))
    manifests = [m for n in backup_set.members if (m := catalog.read_manifest(storage, n))]
    dump = next((m for m in manifests if m.kind == "database"), None)
    volumes = [m for m in manifests if m.kind == "volume" and m.target not in backup_set.folders]
    folders = [m for m in manifests if m.kind == "volume" and m.target in backup_set.folders]
    scratch_db = _scratch_database(dump, server, live_database, drill_id)
    originals = containers_to_stop(client, [m.target for m in volumes], options.project)
    run = _Rehearsal(storage, client, drill_id, options, sink)
    entry = journal.record(storage, KIND, run.journal_data(server, scratch_db, folders), PURPOSE)
    error: SafeholdError | None = None
    try:
        if dump is not None and server is not None and scratch_db is not None:
            run.database(dump, server, scratch_db)
        for member in volumes:
            run.volume(member)
        for member in folders:
            run.folder(member)
        target = server.with_db(scratch_db) if server and scratch_db else None
        for command in options.post_restore_cmds:
            run.post(command, target)
        run.start(originals)
        run.step("healthy", "the copies are healthy", run.healthy)
    except SafeholdError as exc:
        error = exc
    finally:  # also on SIGTERM/SIGINT; a teardown that fails leaves the entry to the next run
        torn = run.teardown(server, scratch_db)
        if torn is None:
            journal.done(storage, entry)
    record = run.record(started, backup_set.id, error, torn)
    write_drill(storage, record)
    if error is not None:
        error.message = f"full-system drill failed: {error.message}"
        raise error
    if torn is not None:
        raise SafeholdError(
            f"the full-system drill passed, but its rehearsal was not all removed: {torn}",
            hint="the next 'safehold drill' removes the rest (its journal entry is kept)",
        )
    sink(
        Event(
            "drill",
            f"full-system drill of set {backup_set.id} passed: recovered and healthy in "
            f"{record.recovery_s:.1f}s (RTO {options.objectives.rto_full_s / 60:.0f} min)",
            data={"drill": drill_id, "recovery_s": record.recovery_s},
        )
    )
    return record


def _scratch_database(
    dump: Manifest | None, server: PgTarget | None, live: str | None, drill_id: str
) -> str | None:
    if dump is None:
        return None
    if server is None:
        raise UsageError("the set holds a database: a full-system drill needs a server")
    scratch = pg_admin.db_name_with_suffix(dump.target, f"_drill_{drill_id}")
    if scratch in (live, server.dbname, dump.target):
        raise UsageError(f"refusing to drill into {scratch!r}: it is a live database name")
    with pg_admin.admin(server) as conn:
        if pg_admin.exists(conn, scratch):
            raise UsageError(f"the scratch database {scratch!r} exists already; drop it first")
    return scratch


class _Rehearsal:
    """One rehearsal's state: what it made, its timed steps, its members' results."""

    def __init__(
        self,
        storage: LocalStorage,
        client: docker.DockerClient,
        drill_id: str,
        options: SystemDrillOptions,
        sink: EventSink,
    ) -> None:
        self.storage = storage
        self.client = client
        self.options = options
        self.sink = sink
        self.scratch = rehearsal.Scratch(drill_id, "", {}, {})
        self.folder_root = storage.path(naming.TMP_DIR) / f"drill-{drill_id}"
        self.steps: list[dict[str, Any]] = []
        self.members: list[dict[str, Any]] = []
        self.copies: list[Any] = []
        self.teardown_s = 0.0

    def journal_data(
        self, server: PgTarget | None, scratch_db: str | None, folders: list[Manifest]
    ) -> dict[str, Any]:
        return {
            "drill": self.scratch.drill_id,
            "database": scratch_db,
            "host": server.host if server else None,
            "port": server.port if server else None,
            "sandbox": str(self.options.sandbox_root) if self.options.sandbox_root else None,
            "folders": str(self.folder_root) if folders else None,
        }

    def step(self, kind: str, title: str, action: Callable[[], _T]) -> _T:
        self.sink(Event("drill", f"step {len(self.steps) + 1}: {title}"))
        began = time.monotonic()
        try:
            done = action()
        except SafeholdError as exc:
            self.steps.append(_timed(kind, title, began, "failed", exc.message))
            raise
        self.steps.append(_timed(kind, title, began))
        return done

    def post(self, command: str, target: PgTarget | None) -> None:
        title = f"post-restore command: {command}"
        self.step("post", title, lambda: post_command(command, target, self.sink))

    def database(self, dump: Manifest, server: PgTarget, scratch: str) -> None:
        options = RestoreOptions.scratch(
            scratch,
            jobs=self.options.jobs,
            decryption=self.options.key,
            roles=self.options.roles,
            lock_timeout=self.options.lock_timeout,
        )
        member = _member(dump, scratch)
        self.members.append(member)
        title = f"restore database {dump.target!r} from {dump.artifact} into {scratch!r}"
        result = self.step(
            "database",
            title,
            lambda: restore_database(server, self.storage, dump.artifact, options, sink=self.sink),
        )
        if dump.tables and result.tables != dump.tables:
            raise IntegrityError(
                f"drill of {dump.artifact}: restored rows differ from the manifest",
                hint="the backup is not trustworthy; take a new one and verify it",
            )
        member.update(
            outcome="ok",
            seconds=self.steps[-1]["seconds"],
            tables=len(result.tables),
            rows=sum(result.tables.values()),
        )

    def volume(self, manifest: Manifest) -> None:
        scratch = rehearsal.create_volume(self.client, self.scratch.drill_id, manifest.target)
        self.scratch.volumes[manifest.target] = scratch
        member = _member(manifest, scratch)
        self.members.append(member)
        title = f"restore volume {manifest.target} from {manifest.artifact} into {scratch}"
        done = self.step(
            "volume",
            title,
            lambda: restore_volume(
                self.client,
                scratch,
                self.storage,
                manifest.artifact,
                safety_backup=False,
                lock_timeout=self.options.lock_timeout,
                sink=self.sink,
                access=self.options.access,
                key=self.options.key,
            ),
        )
        member.update(
            outcome="ok",
            seconds=self.steps[-1]["seconds"],
            files=done.facts.files,
            bytes=done.facts.bytes,
        )

    def folder(self, manifest: Manifest) -> None:
        scratch = self.folder_root / manifest.target
        scratch.mkdir(parents=True, exist_ok=True)
        self.scratch.folders[str(manifest.facts.get("source", ""))] = str(scratch)
        member = _member(manifest, str(scratch))
        self.members.append(member)
        title = f"restore folder {manifest.target} from {manifest.artifact} into {scratch}"
        facts = self.step(
            "volume",
            title,
            lambda: restore_tree(
                self.storage,
                manifest.artifact,
                scratch,
                target_name=manifest.target,
                sink=self.sink,
                lock_timeout=self.options.lock_timeout,
                key=self.options.key,
            ),
        )
        member.update(
            outcome="ok", seconds=self.steps[-1]["seconds"], files=facts.files, bytes=facts.bytes
        )

    def start(self, originals: list[Any]) -> None:
        if not originals:
            return
        if not self.scratch.network:  # (a set of plain folders may need one too)
            network = rehearsal.create_network(self.client, self.scratch.drill_id)
            self.scratch = rehearsal.Scratch(
                self.scratch.drill_id, network, self.scratch.volumes, self.scratch.folders
            )
        names = ", ".join(str(c.name) for c in originals)

        def create_and_start() -> None:
            self.copies = rehearsal.create_copies(self.client, originals, self.scratch, self.sink)
            rehearsal.start_copies(self.copies)

        self.step("start", f"start copies of {names} in {self.scratch.network}", create_and_start)

    def healthy(self) -> list[str]:
        if not self.copies:
            return []
        return rehearsal.wait_healthy(self.copies, self.options.health_timeout, self.sink)

    def teardown(self, server: PgTarget | None, scratch_db: str | None) -> str | None:
        """Remove everything; None when all went, else why not (the entry then stays)."""
        problems = []
        with _proc.shielded():
            began = time.monotonic()
            try:
                removed = rehearsal.remove_rehearsal(self.client, self.scratch.drill_id)
                self.sink(Event("drill", f"removed {len(removed)} rehearsal object(s)"))
            except SafeholdError as exc:
                problems.append(exc.message)
            shutil.rmtree(self.folder_root, ignore_errors=True)
            if server is not None and scratch_db is not None:
                try:
                    with pg_admin.admin(server) as conn:
                        pg_admin.drop(conn, scratch_db)
                except (SafeholdError, psycopg.Error) as exc:  # reported; the journal retries
                    problems.append(f"dropping {scratch_db!r} failed: {exc}")
            self.teardown_s = time.monotonic() - began
        return "; ".join(problems) or None

    def record(
        self, started: datetime, set_id: str, error: SafeholdError | None, torn: str | None
    ) -> DrillRecord:
        total = sum(float(s["seconds"]) for s in self.steps)
        goal = self.options.objectives.rto_full_s
        steps = [
            *self.steps,
            {
                "step": "teardown",
                "title": "remove the rehearsal",
                "seconds": round(self.teardown_s, 3),
                "outcome": "failed" if torn else "ok",
                "error": torn,
            },
        ]
        if error is not None:
            for member in self.members:
                if "outcome" not in member:
                    member.update(outcome="failed", error=error.message)
        return DrillRecord(
            id=self.scratch.drill_id,
            subject=f"full system, set {set_id}",
            started_at=started,
            finished_at=datetime.now(UTC),
            outcome="failed" if error else "ok",
            recovery_s=total,
            members=self.members,
            where=self.options.where or "scratch database and Docker objects",
            error=error.message if error else None,
            set_id=set_id,
            scope="full-system",
            steps=steps,
            objective_s=goal,
        )


def _member(manifest: Manifest, scratch: str) -> dict[str, Any]:
    return {
        "artifact": manifest.artifact,
        "kind": manifest.kind,
        "target": manifest.target,
        "scratch": scratch,
    }


def _timed(
    kind: str, title: str, began: float, outcome: str = "ok", error: str | None = None
) -> dict[str, Any]:
    took = round(time.monotonic() - began, 3)
    return {"step": kind, "title": title, "seconds": took, "outcome": outcome, "error": error}
