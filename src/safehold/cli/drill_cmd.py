from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import click

from .. import catalog
from ..errors import UsageError
from ..model import BackupRecord
from ..operations.drill import DrillRecord, drill, write_drill
from ..sandbox import SandboxCluster
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from .locations import mirrored, read_source
from .physical import COMMAND_HELP, run_pitr_drill
from .runtime import runtime, shared_options


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
    """
    if pitr:
        if name or latest or set_ref or sandbox or source:
            raise UsageError("--pitr drills base backup + WAL; it does not take a backup name")
        with runtime(ctx, as_json=as_json) as rt:
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
    if to_time or to_lsn or to_name or server_user or command:
        raise UsageError("--to-time, --to-lsn, --to-name, --server-user and --command need --pitr")
    if sum(bool(x) for x in (name, latest, set_ref)) > 1:
        raise UsageError("give one of NAME, --latest or --set")
    subject = name or (f"set:{set_ref}" if set_ref else "latest")
    with runtime(ctx, as_json=as_json) as rt, contextlib.ExitStack() as stack:
        storage = LocalStorage(rt.settings.backup_dir)
        source = read_source(rt, storage, source)
        if source is not None:
            storage = stack.enter_context(mirrored(rt, source, _picker(name, set_ref)))
        live = rt.settings.pg_target()
        with _server(live, sandbox) as (server, where):
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
        if source is not None:
            # The scratch copy goes away; the drill's record belongs to the local repository.
            record = dataclasses.replace(record, subject=f"{record.subject} (from {source})")
            write_drill(LocalStorage(rt.settings.backup_dir), record)
        if as_json:
            rt.emit_json(record.to_json())
        else:
            _show(record)


@contextlib.contextmanager
def _server(live: PgTarget, sandbox: bool) -> Iterator[tuple[PgTarget, str]]:
    if not sandbox:
        yield live.with_db(live.maintenance_db), f"server {live.host}:{live.port}"
        return
    cluster = SandboxCluster()
    try:
        server = cluster.start()
        yield server, f"throwaway cluster on 127.0.0.1:{server.port}"
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
