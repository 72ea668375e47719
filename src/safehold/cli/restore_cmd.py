from __future__ import annotations

import dataclasses

import click

from ..errors import RestoreError
from ..operations.database.restore import RestoreResult, restore_database
from ..storage import LocalStorage
from .chunked import pending_snapshot, snapshot_ref
from .databases import restore_target
from .flags import config_option, shared_options
from .list_cmd import show_backups
from .locations import local_ref, read_source
from .physical import PitrRequest, pitr_options, run_restore
from .restore_all import AllRequest, restore_all
from .restore_request import RestoreRequest, roles_mode
from .restore_volumes import plan_volumes, restore_volumes
from .runtime import Runtime, runtime


@click.command()
@click.option("--list", "list_only", is_flag=True, help="list the backups (like 'safehold list')")
@click.option(
    "--database",
    "database_ref",
    metavar="FILE|NAME|SNAPSHOT|latest",
    help="restore the database from this backup (a chunk store snapshot id is exported as "
    "a dump first)",
)
@click.option(
    "--target-db",
    metavar="NAME",
    help="restore side by side into this database (created if missing); the live "
    "database is not touched",
)
@config_option(
    "--jobs",
    "restore.jobs",
    "-j",
    type=click.IntRange(min=0),
    help="pg_restore parallel jobs (0: cores)",
)
@click.option(
    "--drop-previous",
    is_flag=True,
    help="drop the replaced database instead of keeping <name>_pre_restore_<time>",
)
@click.option("--no-owner", is_flag=True, help="do not restore ownership and privileges")
@click.option(
    "--roles",
    type=click.Choice(["create", "skip", "only"]),
    default=None,
    help="roles named by the backup's globals that this server lacks: create them (default), "
    "skip them, or only create them and stop [restore.roles]",
)
@click.option(
    "--volume",
    "volume_refs",
    multiple=True,
    metavar="NAME:FILE|NAME:SNAPSHOT|NAME:latest",
    help="restore Docker volume NAME from a backup file, name, snapshot id or 'latest' "
    "(repeatable)",
)
@click.option(
    "--stop-containers",
    is_flag=True,
    help="stop running containers that use a volume, restore it, then start them again",
)
@click.option(
    "--no-safety-backup",
    is_flag=True,
    help="do not back up a volume's current content before replacing it",
)
@click.option(
    "--keep-setuid",
    is_flag=True,
    help="keep setuid/setgid bits of files from an archive without a safehold manifest "
    "(dropped by default, with a warning)",
)
@click.option(
    "--all",
    "full",
    is_flag=True,
    help="whole-system restore of a backup set: stop the application, restore the database "
    "and every volume, run post-restore commands, start, check health",
)
@click.option("--set", "set_ref", metavar="ID|latest", help="the set for --all (default: latest)")
@click.option(
    "--point-in-time",
    metavar="TIME",
    help='--all: the newest set taken at or before TIME ("2024-12-01 12:00", local time)',
)
@config_option(
    "--project",
    "restore.project",
    metavar="NAME",
    help="--all: stop this compose project's containers",
)
@config_option(
    "--post-restore-cmd",
    "restore.post_restore_cmds",
    "post_cmds",
    multiple=True,
    metavar="CMD",
    help="--all: run CMD (sh -c, on this host) after the data is back, before the containers "
    "start (repeatable)",
)
@config_option(
    "--health-url", "restore.health_url", metavar="URL", help="--all: poll until it answers 200"
)
@config_option(
    "--health-timeout",
    "restore.health_timeout",
    type=float,
    help="seconds to wait for --health-url",
)
@click.option(
    "--from-step",
    type=click.IntRange(min=1),
    default=1,
    help="--all: skip the restore steps before step N (to continue after a failure)",
)
@click.option(
    "--from",
    "source",
    metavar="LOCATION",
    help="read the backup from this location (a local copy that is missing or damaged is "
    "fetched from the first good location anyway)",
)
@click.option(
    "--pitr",
    is_flag=True,
    help="point-in-time recovery from a base backup and archived WAL (with --to-time, "
    "--to-lsn, --to-name or --to-end, and --target-dir)",
)
@pitr_options
@click.option("--dry-run", is_flag=True, help="print the plan and change nothing")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def restore(
    ctx: click.Context,
    list_only: bool,
    database_ref: str | None,
    target_db: str | None,
    jobs: int | None,
    drop_previous: bool,
    no_owner: bool,
    roles: str | None,
    volume_refs: tuple[str, ...],
    stop_containers: bool,
    no_safety_backup: bool,
    keep_setuid: bool,
    full: bool,
    set_ref: str | None,
    point_in_time: str | None,
    project: str | None,
    post_cmds: tuple[str, ...],
    health_url: str | None,
    health_timeout: float | None,
    from_step: int,
    source: str | None,
    pitr: bool,
    pitr_request: PitrRequest,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore the database and/or Docker volumes safely.

    The database is verified, restored into a staging database, checked and swapped in; the
    replaced one is kept as <name>_pre_restore_<time> unless --drop-previous. A volume is
    verified, its current content backed up, and replaced with exactly the archive's content;
    refused while a running container uses it (unless --stop-containers). A failure leaves live
    data as it was. A backup of another database is refused over the live one unless
    --target-db or --force.

    --all runs the disaster-recovery runbook on a full-system set (--set ID, latest, or
    --point-in-time): verify every member, stop the application's containers, restore the
    database and each volume, run --post-restore-cmd, start the containers, check the database
    answers and --health-url returns 200. Each step is timed; the total is judged against the
    recovery-time objectives. A failed step stops the run and prints the command to continue.

    --pitr restores a physical base backup and replays archived WAL up to --to-time, --to-lsn,
    --to-name or --to-end into --target-dir (a new folder, or with --force the stopped
    cluster's own folder, moved aside first), then reports the exact point reached.
    """
    if list_only:
        show_backups(ctx, as_json, source=source)
        return
    asked = RestoreRequest(
        database_ref,
        volume_refs,
        full,
        pitr,
        dry_run,
        target_db=target_db,
        drop_previous=drop_previous,
        no_owner=no_owner,
        roles=roles_mode(roles),
        force=pitr_request.force,
    )
    asked.check()
    whole = AllRequest(
        set_ref,
        point_in_time,
        from_step,
        not no_safety_backup,
        dry_run,
        source,
        roles,
    )
    if full:
        whole.check()
    if pitr:
        with runtime(ctx, as_json=as_json) as rt:
            storage = LocalStorage(rt.settings.backup_dir)
            run_restore(rt, pitr_request, read_source(rt, storage, source))
        return
    volumes = asked.volumes()
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        if "/" not in (database_ref or "") and all("/" not in ref for _, ref in volumes):
            source = read_source(rt, storage, source)  # a new host: its one location
        if full:
            restore_all(rt, storage, dataclasses.replace(whole, source=source))
            return
        db_result: RestoreResult | None = None
        if dry_run:  # a snapshot is exported by the real run only: say so, write nothing
            database_ref, volumes = _snapshots_planned(rt, storage, database_ref, volumes)
        if database_ref is not None:
            target = rt.settings.pg_target(restore_target(rt, storage, database_ref))
            database_ref = snapshot_ref(rt, storage, database_ref, "database", target.dbname)
            database_ref = local_ref(rt, storage, database_ref, "database", target.dbname, source)
            db_result = restore_database(
                target,
                storage,
                database_ref,
                asked.database_options(rt.settings),
                dry_run=dry_run,
                sink=rt.sink,
            )
            if not as_json:
                _show(db_result, None)
        volumes = [(n, snapshot_ref(rt, storage, r, "volume", n)) for n, r in volumes]
        volumes = [(n, local_ref(rt, storage, r, "volume", n, source)) for n, r in volumes]
        if dry_run:
            restored = plan_volumes(
                rt, storage, volumes, safety=not no_safety_backup, stop=stop_containers
            )
        else:
            restored = restore_volumes(
                rt,
                storage,
                volumes,
                safety=not no_safety_backup,
                stop=stop_containers,
                keep_setuid=keep_setuid,
            )
        if as_json and db_result is not None and not volumes:
            rt.emit_json(db_result.to_json())
        elif as_json:
            rt.emit_json(
                {"database": db_result.to_json() if db_result else None, "volumes": restored}
            )
        if db_result is not None and db_result.dry_run:
            _refuse_if_refused(db_result)


def _snapshots_planned(
    rt: Runtime, storage: LocalStorage, database_ref: str | None, volumes: list[tuple[str, str]]
) -> tuple[str | None, list[tuple[str, str]]]:
    """A dry run's plan lines for the targets whose backup is a snapshot; the other targets."""
    planned: list[tuple[str, str]] = []
    if database_ref is not None:
        name = rt.settings.database_name()
        snap = pending_snapshot(rt, storage, database_ref, "database", name)
        if snap is not None:
            planned.append((f"database {name}", snap))
            database_ref = None
    rest = []
    for volume, ref in volumes:
        snap = pending_snapshot(rt, storage, ref, "volume", volume)
        if snap is None:
            rest.append((volume, ref))
        else:
            planned.append((f"volume {volume}", snap))
    for what, snap in planned:
        line = (
            f"plan (dry run, nothing changed): {what}: export snapshot {snap} as the seed's "
            "files (checked against the snapshot's hash), then restore them as any backup"
        )
        rt.sink_info(line) if rt.as_json else click.echo(line)
    return database_ref, rest


def _refuse_if_refused(result: RestoreResult) -> None:
    """A dry run whose plan a real run would refuse exits as that run would (after the plan)."""
    plan = result.plan
    if plan.refused:
        raise RestoreError(f"a restore would be refused: {plan.refused[0]}", hint=plan.refused[1])
    if plan.roles is not None and plan.roles.blocked:
        raise RestoreError(
            f"a restore would be refused: roles {', '.join(plan.roles.missing)} are missing and "
            f"{plan.roles.blocked}",
            hint=f"create them first as a superuser from {plan.roles.artifact}",
        )


def _show(result: RestoreResult, emit_json: object) -> None:
    if callable(emit_json):
        emit_json(result.to_json())
        return
    plan = result.plan
    if result.dry_run:
        click.echo(
            f"plan (dry run, nothing changed): restore {plan.source.name} into {plan.database!r}"
        )
        for number, step in enumerate(plan.steps(), 1):
            click.echo(f"  {number}. {step}")
        return
    if plan.roles is not None:
        created = ", ".join(result.roles_created) or "none (none missing, or --roles skip)"
        click.echo(f"roles created from {plan.roles.artifact}: {created}")
        if plan.roles.mode == "only":
            return
    total = sum(result.timings.values())
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    click.echo(f"restored {plan.source.name} into {plan.database!r} in {total:.1f}s ({parts})")
    if plan.previous and not plan.drop_previous:
        click.echo(
            f"previous database kept as {plan.previous!r} (drop it with: dropdb {plan.previous})"
        )
