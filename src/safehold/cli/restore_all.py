"""``restore --all``: choose the set, print the plan, run it, and show the times against the
recovery-time objectives."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import click
import docker

from ..errors import LockBusy, UsageError
from ..lock import volume_lock
from ..model import Event, EventSink
from ..operations.system.plan import choose_set, plan_system_restore
from ..operations.system.restore import (
    SystemRestoreResult,
    run_system_restore,
)
from ..sources.docker.engine import connect_docker
from ..storage import LocalStorage
from .chunked import pending_set, set_ref_of
from .locations import fetch_set
from .restore_request import roles_mode
from .runtime import Runtime

SYSTEM_RESTORE_LOCK = "system-restore"


@dataclass(frozen=True)
class AllRequest:
    set_ref: str | None
    point_in_time: str | None
    from_step: int
    safety_backup: bool
    dry_run: bool
    source: str | None = None  # a location: the set and its members are fetched from it first
    roles: str | None = None  # --roles: what the roles step does with the dump's globals

    def check(self) -> None:
        if self.set_ref and self.point_in_time:
            raise UsageError("give --set or --point-in-time, not both")
        if self.point_in_time:
            parse_moment(self.point_in_time)


def restore_all(rt: Runtime, storage: LocalStorage, request: AllRequest) -> None:
    settings = rt.settings
    request.check()
    moment = parse_moment(request.point_in_time) if request.point_in_time else None
    set_ref = request.set_ref
    if request.source is not None:
        # Chosen among the location's sets; once fetched, the local repository holds it
        # whole (members verified, record last), and the plan below reads it from there.
        set_ref, moment = fetch_set(rt, storage, request.source, set_ref, moment), None
    elif request.dry_run and (planned := pending_set(rt, storage, set_ref, moment)):
        click.echo(
            f"plan (dry run, nothing changed): export snapshot set {planned} as the seed's "
            "files with its set record, then run the whole-system restore of that set"
        )
        return
    else:  # a set of snapshots is exported (members and record) and then restored as any set
        set_ref, moment = set_ref_of(rt, storage, set_ref, moment)
    with contextlib.ExitStack() as held:
        if not request.dry_run:
            held.enter_context(one_at_a_time(storage, settings.lock_timeout, rt.sink))
        _restore_set(rt, storage, request, set_ref, moment)


@contextlib.contextmanager
def one_at_a_time(storage: LocalStorage, timeout: float, sink: EventSink) -> Iterator[None]:
    """The lock of whole-system restores from this repository, taken before planning: a run
    planned while another has the containers stopped would not know to start them again, and
    the two would restore the same database and volumes in turns, step by step."""
    storage.ensure()
    with contextlib.ExitStack() as held:
        try:
            try:
                held.enter_context(_system_lock(storage, 0.0))
            except LockBusy as busy:
                sink(Event("lock", f"waiting up to {timeout:.0f}s: {_other_run(storage, busy)}"))
                held.enter_context(_system_lock(storage, timeout))
        except LockBusy as exc:
            raise LockBusy(_other_run(storage, exc), hint=exc.hint) from None
        yield


def _system_lock(
    storage: LocalStorage, timeout: float
) -> contextlib.AbstractContextManager[object]:
    purpose = "safehold restore --all"
    return volume_lock(
        storage.root, SYSTEM_RESTORE_LOCK, exclusive=True, timeout=timeout, purpose=purpose
    )


def _other_run(storage: LocalStorage, busy: LockBusy) -> str:
    holder = busy.message.partition(" is locked by ")[2]
    return f"another whole-system restore from {storage.description} is running: {holder}"


def _restore_set(
    rt: Runtime,
    storage: LocalStorage,
    request: AllRequest,
    set_ref: str | None,
    moment: datetime | None,
) -> None:
    settings = rt.settings
    backup_set, why = choose_set(storage, set_ref, moment)
    health_url = settings.restore.health_url or None
    docker_volumes = set(backup_set.volumes) - set(backup_set.folders)
    project = settings.restore.project or None
    client: docker.DockerClient | None = connect_docker() if docker_volumes or project else None
    database = settings.pg_target() if backup_set.database else None
    plan = plan_system_restore(
        storage,
        backup_set,
        why,
        client=client,
        database=database.dbname if database else None,
        project=project,
        post_restore_cmds=settings.restore.post_restore_cmds,
        health_url=health_url,
        from_step=request.from_step,
        per_member=settings.many_databases or len(backup_set.databases) > 1,
    )
    if request.dry_run:
        if rt.as_json:
            rt.emit_json({**plan.to_json(), "dry_run": True})
            return
        click.echo(f"plan (dry run, nothing changed): whole-system restore of {why}")
        for step in plan.steps:
            skipped = " (skipped: before --from-step)" if plan.skipped(step) else ""
            click.echo(f"  {step.number}. {step.title}{skipped}")
        return
    rt.sink_info(f"whole-system restore of {why}")
    result = run_system_restore(
        plan,
        storage,
        client=client,
        database=database,
        options=settings.system_restore_options(
            roles=roles_mode(request.roles), safety_backup=request.safety_backup
        ),
        health_url=health_url,
        sink=rt.sink,
    )
    if rt.as_json:
        rt.emit_json(result.to_json())
    else:
        show_result(result)


def parse_moment(text: str) -> datetime:
    """ISO-8601 ("2024-12-01 12:00", "2024-12-01T12:00:00Z"); without a zone: local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--point-in-time {text!r} is not a date and time",
            hint='e.g. --point-in-time "2024-12-01 12:00" (local time) or '
            '"2024-12-01T12:00:00Z" (UTC)',
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def show_result(result: SystemRestoreResult) -> None:
    click.echo(f"restored set {result.plan.backup_set.id} in {result.total_s:.1f}s")
    for step, took in result.timings:
        click.echo(f"  {step.number:>2}. {step.title:<70} {took:8.1f}s")
    click.echo("recovery time against the objectives:")
    for name, measured, target in result.measured():
        verdict = "met" if measured <= target else "MISSED"
        click.echo(f"  {name:<15} {measured:8.1f}s of {target / 60:.0f} min  {verdict}")
    for note in result.notes:
        click.echo(note)
