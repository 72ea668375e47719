from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from ..errors import UsageError
from ..operations.drill import DrillRecord, drill
from ..sandbox import SandboxCluster
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
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
@click.option("--json", "as_json", is_flag=True, help="print the drill record as JSON")
@shared_options
@click.pass_context
def drill_cmd(
    ctx: click.Context,
    name: str | None,
    latest: bool,
    set_ref: str | None,
    sandbox: bool,
    as_json: bool,
) -> None:
    """Restore backups into scratch space, check them, time them, clean up.

    A database backup is restored into a new scratch database (<name>_safehold_drill_<time>) on
    the configured server (or a throwaway local cluster with --sandbox), a volume into a scratch
    folder; rows per table and file counts/bytes are checked against the manifest; the scratch
    copies are dropped. The measured recovery time is recorded (.safehold/drills/) and shown by
    'safehold status'. Live data is never touched. This is the monthly restore test, automated.
    """
    if sum(bool(x) for x in (name, latest, set_ref)) > 1:
        raise UsageError("give one of NAME, --latest or --set")
    subject = name or (f"set:{set_ref}" if set_ref else "latest")
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
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
