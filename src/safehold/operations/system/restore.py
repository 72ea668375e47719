"""Whole-system restore: the disaster-recovery runbook as one operation.

Verify every member first (nothing stops while a broken set could still be refused), stop the
application's containers, restore the database (staging + swap, the previous one kept) and
each volume (safety backup first), run the post-restore commands, start the containers again,
then prove the result: the database answers, and the health URL returns 200. Every step is
timed and the totals are judged against the recovery-time objectives.

A failing step stops the run. The containers are started again (each restore step is atomic,
so every volume and the database hold either their old or their new content, never a mix),
and the error says which steps are done and the command that continues from the failed one.
A run killed outright leaves that to the journal: each step's own entries undo or finish the
step, the containers are started again, and the step the run was at (``system_restore``, kept
up to date) lets the next command say where it stopped and how to continue.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import docker

from ... import _proc
from ...crypto import EncryptionKey
from ...errors import SafeholdError
from ...model import Event, EventSink, Objectives, null_sink
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from .. import journal
from ..database.restore import RestoreOptions, restore_database
from ..volumes.docker import restore_volume
from ..volumes.downtime import Downtime
from ..volumes.folder import restore_tree
from ..volumes.options import VolumeOptions
from ..volumes.recovery_containers import PROGRESS_KIND
from .plan import Step, SystemPlan, folder_of
from .steps import count_tables, post_command, verify_members, wait_healthy

CHANGING = ("roles", "database", "volume", "folder", "post")
PURPOSE = "safehold restore --all"


@dataclass(frozen=True)
class SystemRestoreOptions:
    database: RestoreOptions = field(default_factory=RestoreOptions)
    safety_backup: bool = True
    volumes: VolumeOptions = field(default_factory=VolumeOptions)
    encryption: EncryptionKey | None = None  # safety backups are encrypted like backups
    health_timeout: float = 120.0
    lock_timeout: float = 300.0
    objectives: Objectives = field(default_factory=Objectives)


@dataclass
class SystemRestoreResult:
    plan: SystemPlan
    timings: list[tuple[Step, float]] = field(default_factory=list)
    total_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    objectives: Objectives = field(default_factory=Objectives)

    def measured(self) -> list[tuple[str, float, float]]:
        """(objective, measured seconds, target seconds) for the parts this run did."""
        spent = dict.fromkeys(("database", "volume"), 0.0)
        for step, took in self.timings:
            if step.kind in ("volume", "folder"):
                spent["volume"] += took
            elif step.kind in ("database", "roles"):
                spent["database"] += took
        kinds = {s.kind for s, _ in self.timings}
        rows = []
        if "database" in kinds:
            rows.append(("database", spent["database"], self.objectives.rto_database_s))
        if kinds & {"volume", "folder"}:
            rows.append(("container data", spent["volume"], self.objectives.rto_volumes_s))
        rows.append(("full system", self.total_s, self.objectives.rto_full_s))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "timings_s": [{**s.to_json(), "seconds": round(t, 3)} for s, t in self.timings],
            "total_s": round(self.total_s, 3),
            "objectives": [
                {"objective": n, "measured_s": round(m, 3), "target_s": t, "met": m <= t}
                for n, m, t in self.measured()
            ],
            "notes": self.notes,
        }


def run_system_restore(
    plan: SystemPlan,
    storage: LocalStorage,
    *,
    client: docker.DockerClient | None,
    database: PgTarget | None,
    options: SystemRestoreOptions,
    health_url: str | None = None,
    sink: EventSink = null_sink,
) -> SystemRestoreResult:
    result = SystemRestoreResult(plan, objectives=options.objectives)
    runner = _Runner(plan, result, sink, storage)
    began = time.monotonic()
    try:
        steps = {s.kind: s for s in plan.steps if s.kind in ("verify", "stop", "start")}
        members = [s.member for s in plan.steps if s.member is not None and not plan.skipped(s)]
        runner.step(steps["verify"], lambda: verify_members(members, storage, sink))
        restore_steps = [s for s in plan.steps if s.kind in CHANGING]
        stop_step, start_step = steps.get("stop"), steps.get("start")
        # Stopped so far: journalled, and started again however the run ends.
        why = f"restore of set {plan.backup_set.id}"
        downtime = Downtime(sink, why, storage, stop_timeout=options.volumes.stop_timeout)
        try:
            if stop_step is not None:
                runner.step(stop_step, lambda: downtime.stop(list(plan.containers)))
            for step in restore_steps:
                action = _action(step, storage, client, database, options, result, sink)
                runner.step(step, action)
        except BaseException:
            try:
                downtime.start()
            except SafeholdError as restart:
                # Already logged per container; the step's failure is the error to report.
                sink(Event("restore", restart.message, "error"))
            raise
        if start_step is not None:
            runner.step(start_step, downtime.start)
        for step in plan.steps:
            if step.kind == "connect" and database is not None:
                live = database.with_db(plan.database_of(step, database.dbname))
                runner.step(step, functools.partial(_check_database, live, result))
            elif step.kind == "health" and health_url:
                runner.step(step, lambda: wait_healthy(health_url, options.health_timeout))
    except KeyboardInterrupt:  # SIGTERM or SIGINT: unwinding (containers started above)
        runner.interrupted()
        raise
    finally:
        runner.finished()
    result.total_s = time.monotonic() - began
    return result


class _Runner:
    """Runs the steps, and keeps the step it is at in the journal (``PROGRESS_KIND``): after a
    kill the next command says where the restore stopped and how to continue."""

    def __init__(
        self, plan: SystemPlan, result: SystemRestoreResult, sink: EventSink, storage: LocalStorage
    ) -> None:
        self._plan = plan
        self._result = result
        self._sink = sink
        self._storage = storage
        self._entry: journal.Entry | None = None
        self._current: Step | None = None

    def step(self, step: Step, action: Callable[[], object]) -> None:
        total = len(self._plan.steps)
        if self._plan.skipped(step):
            self._sink(Event("restore", f"step {step.number}/{total} skipped: {step.title}"))
            return
        # Journalled once the step before is done and before this one is announced: after a
        # kill the journal names the step to continue from, which the log may not have shown
        # yet. An interruption names the step the log announced last (shielded: the two agree).
        self._journal(step)
        with _proc.shielded():
            self._sink(Event("restore", f"step {step.number}/{total}: {step.title}"))
            self._current = step
        began = time.monotonic()
        try:
            action()
        except SafeholdError as exc:
            raise self._stopped_at(step, exc) from exc
        took = time.monotonic() - began
        self._result.timings.append((step, took))
        self._sink(
            Event(
                "restore",
                f"step {step.number}/{total} done in {took:.1f}s",
                data={"step": step.number, "seconds": took},
            )
        )

    def interrupted(self) -> None:
        """SIGTERM or SIGINT in or between steps: say where, at the last step begun."""
        if (step := self._current) is None:
            return
        state, resume = self._where(step)
        said = f"whole-system restore {stopped_at(step, len(self._plan.steps))}; {state}; {resume}"
        self._sink(Event("restore", said, "warning"))

    def finished(self) -> None:
        if self._entry is not None:
            journal.done(self._storage, self._entry)

    def _journal(self, step: Step) -> None:
        state, resume = self._where(step)
        data = {"set": self._plan.backup_set.id, "at": stopped_at(step, len(self._plan.steps))}
        data |= {"state": state, "resume": resume}
        if self._entry is None:
            self._entry = journal.record(self._storage, PROGRESS_KIND, data, PURPOSE)
            return
        # Rewritten in place (atomically), so it keeps its place among the run's entries.
        self._entry = replace(self._entry, data=data)
        body = json.dumps(self._entry.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        self._storage.put_bytes(self._entry.key, body)

    def _where(self, step: Step) -> tuple[str, str]:
        """What is done when the run stops at ``step``, and what continues from there."""
        if step.kind in ("start", "connect", "health"):
            return "the data is restored", "nothing to restore again"
        resume = f"continue with: {self._resume(step)} (plus the same options as before)"
        return self._state(), resume

    def _state(self) -> str:
        done = [s.title for s, _ in self._result.timings if s.kind in CHANGING]
        return ("done: " + "; ".join(done)) if done else "no data was changed"

    def _resume(self, step: Step) -> str:
        return f"safehold restore --all --set {self._plan.backup_set.id} --from-step {step.number}"

    def _stopped_at(self, step: Step, exc: SafeholdError) -> SafeholdError:
        state = self._state()
        containers = (
            " The stopped containers were started again."
            if self._plan.containers and step.kind not in ("start", "connect", "health")
            else ""
        )
        exc.message = (
            f"whole-system restore {stopped_at(step, len(self._plan.steps))}: {exc.message}"
        )
        exc.hint = (
            f"{state}.{containers} {exc.hint + '. ' if exc.hint else ''}Once fixed, continue "
            f"with: {self._resume(step)} (plus the same options as before)"
        )
        return exc


def stopped_at(step: Step, total: int | None = None) -> str:
    of = f"/{total}" if total else ""
    return f"stopped at step {step.number}{of} ({step.title})"


def _action(
    step: Step,
    storage: LocalStorage,
    client: docker.DockerClient | None,
    database: PgTarget | None,
    options: SystemRestoreOptions,
    result: SystemRestoreResult,
    sink: EventSink,
) -> Callable[[], object]:
    if step.kind == "database":
        assert database is not None
        live = database.with_db(result.plan.database_of(step, database.dbname))
        return lambda: _restore_db(step, storage, live, options, result, sink)
    if step.kind == "roles":
        assert database is not None
        live = database.with_db(result.plan.database_of(step, database.dbname))
        return lambda: _create_roles(step, storage, live, options, result, sink)
    if step.kind == "volume":
        assert client is not None
        return lambda: _restore_one_volume(step, storage, client, options, result, sink)
    if step.kind == "folder":
        assert step.member is not None
        member = step.member
        return lambda: restore_tree(
            storage,
            member.artifact,
            folder_of(step),
            target_name=member.target,
            sink=sink,
            lock_timeout=options.lock_timeout,
            key=options.database.decryption,
        )
    return lambda: post_command(step.target, database, sink)


def _restore_db(
    step: Step,
    storage: LocalStorage,
    database: PgTarget,
    options: SystemRestoreOptions,
    result: SystemRestoreResult,
    sink: EventSink,
) -> None:
    assert step.member is not None
    done = restore_database(database, storage, step.member.artifact, options.database, sink=sink)
    if done.plan.previous and not done.plan.drop_previous:
        result.notes.append(f"the replaced database is kept as {done.plan.previous!r}")


def _create_roles(
    step: Step,
    storage: LocalStorage,
    database: PgTarget,
    options: SystemRestoreOptions,
    result: SystemRestoreResult,
    sink: EventSink,
) -> None:
    """The set's globals before its database: the missing roles, nothing else (the database
    step then finds them; ``--roles skip`` skips this step's work too)."""
    assert step.member is not None
    if options.database.roles == "skip":
        result.notes.append("roles were not created (--roles skip)")
        return
    dump = str(step.member.facts.get("dump", ""))
    done = restore_database(
        database, storage, dump, replace(options.database, roles="only"), sink=sink
    )
    if done.roles_created:
        result.notes.append(f"roles created: {', '.join(done.roles_created)}")


def _restore_one_volume(
    step: Step,
    storage: LocalStorage,
    client: docker.DockerClient,
    options: SystemRestoreOptions,
    result: SystemRestoreResult,
    sink: EventSink,
) -> None:
    assert step.member is not None
    done = restore_volume(
        client,
        step.target,
        storage,
        step.member.artifact,
        safety_backup=options.safety_backup,
        compression=options.volumes.compression,
        lock_timeout=options.lock_timeout,
        sink=sink,
        access=options.volumes.access,
        encryption=options.encryption,
        key=options.database.decryption,
    )
    if done.safety_backup is not None:
        result.notes.append(
            f"the previous content of volume {step.target} is kept as {done.safety_backup.artifact}"
        )


def _check_database(target: PgTarget, result: SystemRestoreResult) -> None:
    tables = count_tables(target)
    result.notes.append(f"database {target.dbname!r} answers: {tables} tables")
