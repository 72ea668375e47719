from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from .. import catalog
from ..errors import UsageError
from ..model import BackupRecord
from ..operations.checks.drill import DrillRecord, drill, write_drill
from ..sources.pg_cluster import ScratchCluster
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from .chunked import drill_snapshots, set_ref_of, with_exports
from .flags import config_option, shared_options
from .fleet_records import drills_shared
from .locations import mirrored, read_source
from .physical import COMMAND_HELP, run_pitr_drill
from .runtime import Runtime, runtime


@dataclass(frozen=True)
class DrillRequest:
    """What ``safehold drill`` was asked; ``check`` refuses what does not go together before
    anything runs: the full-system rehearsal, the PITR drill and the drill of backups each
    take their own flags."""

    name: str | None
    latest: bool
    set_ref: str | None
    sandbox: bool
    source: str | None
    pitr: bool
    full_system: bool
    pitr_only: bool  # --to-time, --to-lsn, --to-name, --server-user or --command given
    rehearsal_only: bool  # --project, --post-restore-cmd or --health-timeout given

    def check(self) -> None:
        if self.full_system:
            if self.name or self.latest or self.pitr or self.source:
                raise UsageError("--full-system drills a set: give --set ID|latest, not a name")
            return
        if self.rehearsal_only:
            raise UsageError(
                "--project, --post-restore-cmd and --health-timeout need --full-system"
            )
        if self.pitr:
            if self.name or self.latest or self.set_ref or self.sandbox or self.source:
                raise UsageError("--pitr drills base backup + WAL; it does not take a backup name")
            return
        if self.pitr_only:
            raise UsageError(
                "--to-time, --to-lsn, --to-name, --server-user and --command need --pitr"
            )
        if sum(bool(x) for x in (self.name, self.latest, self.set_ref)) > 1:
            raise UsageError("give one of NAME, --latest or --set")


@click.command("drill")
@click.argument("name", required=False)
@click.option("--latest", is_flag=True, help="the newest good backup of every target (default)")
@click.option("--set", "set_ref", metavar="ID|latest", help="every member of a full-system set")
@click.option(
    "--sandbox",
    is_flag=True,
    help="restore databases into a throwaway local cluster instead of the configured server",
)
@click.option(
    "--from",
    "source",
    metavar="LOCATION",
    help="drill the copies in this location ([locations.NAME]) instead of the local ones",
)
@click.option(
    "--pitr",
    is_flag=True,
    help="drill a point-in-time recovery (base backup + WAL) into a scratch cluster; with "
    "--to-time, --to-lsn or --to-name (default: the end of the archive)",
)
@click.option("--to-time", help="--pitr: recover up to this time (ISO 8601; UTC without a zone)")
@click.option("--to-lsn", metavar="LSN", help="--pitr: recover up to this WAL position")
@click.option("--to-name", metavar="NAME", help="--pitr: recover up to this restore point")
@click.option("--server-user", help="--pitr: OS user to run the scratch server as (root only)")
@click.option("--command", "command", help=f"--pitr: {COMMAND_HELP}")
@click.option(
    "--full-system",
    is_flag=True,
    help="rehearse a whole-system recovery of a set (--set, default latest) in isolation: "
    "scratch database and volumes, copies of the containers without ports or production "
    "networks, post-restore commands, health; timed against the full-system RTO",
)
@config_option(
    "--project",
    "restore.project",
    help="--full-system: compose project whose containers are copied",
)
@config_option(
    "--post-restore-cmd",
    "restore.post_restore_cmds",
    "post_cmds",
    multiple=True,
    help="--full-system: run after the data is back (PG* name the scratch database)",
)
@config_option(
    "--health-timeout",
    "restore.health_timeout",
    type=float,
    help="--full-system: seconds to wait for health",
)
@click.option("--json", "as_json", is_flag=True, help="print the drill record as JSON")
@shared_options
@click.pass_context
def drill_cmd(
    ctx: click.Context,
    name: str | None,
    latest: bool,
    set_ref: str | None,
    sandbox: bool,
    source: str | None,
    pitr: bool,
    to_time: str | None,
    to_lsn: str | None,
    to_name: str | None,
    server_user: str | None,
    command: str | None,
    full_system: bool,
    project: str | None,
    post_cmds: tuple[str, ...],
    health_timeout: float | None,
    as_json: bool,
) -> None:
    """Restore backups into scratch space, check them, time them, clean up.

    A database backup is restored into a new scratch database (<name>_safehold_drill_<time>) on
    the configured server (or a throwaway local cluster with --sandbox), a volume into a scratch
    folder; rows per table and file counts/bytes are checked against the manifest; the scratch
    copies are dropped. The measured recovery time is recorded (.safehold/drills/) and shown by
    'safehold status'. Live data is never touched. This is the monthly restore test, automated.

    --pitr drills a point-in-time recovery instead: the base backup and WAL are restored into a
    scratch folder, the server recovers to the target and promotes, every table of the database
    is read and counted, and the scratch cluster is removed.

    --full-system is the quarterly/annual disaster-recovery rehearsal: the set's database goes
    into a scratch database (<db>_drill_<id>; no role is created or altered on the configured
    server, --sandbox uses a throwaway cluster with the dump's roles), its volumes into scratch
    volumes; the post-restore commands run with PG* naming the scratch database; copies of the
    application's containers start on the restored data in an internal network of their own,
    with no published ports; the drill waits for their HEALTHCHECKs. Each step is timed and the
    total recorded as the measured full-system recovery time against the RTO. Everything is
    removed afterwards, also on failure or SIGTERM (after a kill, by the next command).
    """
    DrillRequest(
        name,
        latest,
        set_ref,
        sandbox,
        source,
        pitr,
        full_system,
        pitr_only=bool(to_time or to_lsn or to_name or server_user or command),
        rehearsal_only=bool(project or post_cmds or health_timeout is not None),
    ).check()
    if full_system:
        with runtime(ctx, as_json=as_json) as rt, drills_shared(rt):
            record = _full_system(rt, set_ref, sandbox)
            if as_json:
                rt.emit_json(record.to_json())
            else:
                _show_full(record)
        return
    if pitr:
        with runtime(ctx, as_json=as_json) as rt, drills_shared(rt):
            record = run_pitr_drill(rt, to_time, to_lsn, to_name, server_user, command)
            if as_json:
                rt.emit_json(record.to_json())
            else:
                member = record.members[0]
                click.echo(
                    f"drill {record.id}: {member['artifact']} from {member['base']}: "
                    f"{member['reached']}; {member['tables']} tables, {member['rows']} rows, "
                    f"recovered in {record.recovery_s:.1f}s"
                )
        return
    subject = name or (f"set:{set_ref}" if set_ref else "latest")
    with runtime(ctx, as_json=as_json) as rt, drills_shared(rt), contextlib.ExitStack() as stack:
        storage = LocalStorage(rt.settings.backup_dir)
        source = read_source(rt, storage, source)
        if source is not None:
            storage = stack.enter_context(mirrored(rt, source, _picker(name, set_ref)))
        # Chunked targets: the snapshots are exported first; that time is recovery time too.
        spent = drill_snapshots(rt, storage, name) if source is None else {}
        live = rt.settings.pg_target()
        with _server(live, sandbox) as (server, where, _root):
            record = drill(
                storage,
                subject,
                server=server,
                live_database=live.dbname,
                where=where,
                jobs=rt.settings.restore.jobs,
                sink=rt.sink,
                key=rt.settings.decryption_key(),
            )
        if spent:
            record = with_exports(record, spent)
            write_drill(storage, record)  # the same record, with the exports' time in it
        if source is not None:
            # The scratch copy goes away; the drill's record belongs to the local repository.
            record = dataclasses.replace(record, subject=f"{record.subject} (from {source})")
            write_drill(LocalStorage(rt.settings.backup_dir), record)
        if as_json:
            rt.emit_json(record.to_json())
        else:
            _show(record)


def _full_system(rt: Runtime, set_ref: str | None, sandbox: bool) -> DrillRecord:
    from ..operations.checks.rehearsal import SystemDrillOptions, drill_system
    from ..sources.docker.engine import connect_docker

    settings = rt.settings
    storage = LocalStorage(settings.backup_dir)
    set_ref, _ = set_ref_of(rt, storage, set_ref, None)  # a set of snapshots: exported first
    live = settings.pg_target()
    client = connect_docker()
    with _server(live, sandbox) as (server, where, root):
        options = SystemDrillOptions(
            set_ref=set_ref or "latest",
            project=settings.restore.project or None,
            post_restore_cmds=settings.restore.post_restore_cmds,
            health_timeout=settings.restore.health_timeout,
            jobs=settings.restore.jobs,
            access=settings.volume_options().access,
            lock_timeout=settings.lock_timeout,
            objectives=settings.objectives_s(),
            roles="create" if sandbox else "skip",
            key=settings.decryption_key(),
            where=where,
            sandbox_root=root,
        )
        return drill_system(
            storage,
            client=client,
            server=server,
            live_database=live.dbname,
            options=options,
            sink=rt.sink,
        )


def _show_full(record: DrillRecord) -> None:
    goal = record.objective_s or 0.0
    verdict = "within" if record.recovery_s <= goal else "OVER"
    click.echo(
        f"drill {record.id}: {record.subject} rehearsed on {record.where}: recovered and healthy "
        f"in {record.recovery_s:.1f}s, {verdict} the full-system RTO of {goal / 60:.0f} min"
    )
    for step in record.steps:
        click.echo(f"  {step['step']:>8}  {step['seconds']:8.2f}s  {step['title']}")


@contextlib.contextmanager
def _server(live: PgTarget, sandbox: bool) -> Iterator[tuple[PgTarget, str, Path | None]]:
    if not sandbox:
        yield live.with_db(live.maintenance_db), f"server {live.host}:{live.port}", None
        return
    cluster = ScratchCluster()
    try:
        server = cluster.start()
        yield server, f"throwaway cluster on 127.0.0.1:{server.port}", cluster.root
    finally:
        cluster.remove()


def _picker(name: str | None, set_ref: str | None) -> Callable[[list[BackupRecord]], list[str]]:
    """Which artifacts of a location a --from drill reads."""

    def pick(records: list[BackupRecord]) -> list[str]:
        if name:
            return [name]
        if set_ref:
            ids = sorted({r.manifest.set_id for r in records if r.manifest and r.manifest.set_id})
            wanted = ids[-1] if set_ref == "latest" and ids else set_ref
            return [r.name for r in records if r.manifest and r.manifest.set_id == wanted]
        return [r.name for r in catalog.newest_by_target(records).values()]

    return pick


def _show(record: DrillRecord) -> None:
    click.echo(
        f"drill {record.id}: {record.subject} restored and checked on {record.where} in "
        f"{record.recovery_s:.1f}s"
    )
    for member in record.members:
        detail = (
            f"{member['tables']} tables, {member['rows']} rows"
            if member["kind"] == "database"
            else f"{member['files']} files, {member['bytes']} bytes"
        )
        click.echo(f"  {member['artifact']}: {member['seconds']:.1f}s, {detail}")
