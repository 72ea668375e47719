from __future__ import annotations

import click

from ..errors import UsageError
from ..operations.engine import connect_docker
from ..operations.restore import RestoreResult, restore_database
from ..operations.volume import restore_volume
from ..storage import LocalStorage
from .list_cmd import show_backups
from .runtime import Runtime, runtime, shared_options


@click.command()
@click.option("--list", "list_only", is_flag=True, help="list the backups (like 'safehold list')")
@click.option(
    "--database",
    "database_ref",
    metavar="FILE|NAME|latest",
    help="restore the database from this backup",
)
@click.option(
    "--target-db",
    metavar="NAME",
    help="restore side by side into this database (created if missing); the live "
    "database is not touched",
)
@click.option(
    "--jobs", "-j", type=int, default=None, help="pg_restore parallel jobs (default: cores)"
)
@click.option(
    "--drop-previous",
    is_flag=True,
    help="drop the replaced database instead of keeping <name>_pre_restore_<time>",
)
@click.option("--no-owner", is_flag=True, help="do not restore ownership and privileges")
@click.option(
    "--volume",
    "volume_refs",
    multiple=True,
    metavar="NAME:FILE|NAME:latest",
    help="restore Docker volume NAME from a backup file, name or 'latest' (repeatable)",
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
    volume_refs: tuple[str, ...],
    stop_containers: bool,
    no_safety_backup: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore the database and/or Docker volumes safely.

    The database is verified, restored into a staging database, checked and swapped in; the
    replaced one is kept as <name>_pre_restore_<time> unless --drop-previous. A volume is
    verified, its current content backed up, and replaced with exactly the archive's content;
    refused while a running container uses it (unless --stop-containers). A failure leaves live
    data as it was.
    """
    if list_only:
        show_backups(ctx, as_json)
        return
    if database_ref is None and not volume_refs:
        raise UsageError(
            "nothing to restore",
            hint="use --database FILE|NAME|latest, --volume NAME:FILE, or --list",
        )
    volumes = [_volume_ref(text) for text in volume_refs]
    if volumes and dry_run:
        raise UsageError("--dry-run does not cover volumes yet", hint="omit --volume to plan")
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        db_result: RestoreResult | None = None
        if database_ref is not None:
            overrides: dict[str, object] = {
                "target_db": target_db,
                "drop_previous": drop_previous,
                "no_owner": no_owner,
            }
            if jobs is not None:
                overrides["jobs"] = jobs
            db_result = restore_database(
                rt.settings.pg_target(),
                storage,
                database_ref,
                rt.settings.restore_options(**overrides),
                dry_run=dry_run,
                sink=rt.sink,
            )
            if not as_json:
                _show(db_result, None)
        restored = _restore_volumes(
            rt, storage, volumes, safety=not no_safety_backup, stop=stop_containers
        )
        if as_json and db_result is not None and not volumes:
            rt.emit_json(db_result.to_json())
        elif as_json:
            rt.emit_json(
                {"database": db_result.to_json() if db_result else None, "volumes": restored}
            )


def _volume_ref(text: str) -> tuple[str, str]:
    name, sep, ref = text.partition(":")
    if not sep or not name or not ref:
        raise UsageError(
            f"--volume takes NAME:FILE, not {text!r}",
            hint="e.g. --volume user-data:./backups/volume_user-data_20241201_120000.tar.gz "
            "or --volume user-data:latest",
        )
    return name, ref


def _restore_volumes(
    rt: Runtime, storage: LocalStorage, volumes: list[tuple[str, str]], *, safety: bool, stop: bool
) -> list[dict[str, object]]:
    if not volumes:
        return []
    client = connect_docker()
    compression = "zstd" if rt.settings.backup.compress == "zstd" else "gzip"
    done: list[dict[str, object]] = []
    for name, ref in volumes:
        result = restore_volume(
            client,
            name,
            storage,
            ref,
            safety_backup=safety,
            stop_containers=stop,
            compression=compression,
            lock_timeout=rt.settings.lock_timeout,
            sink=rt.sink,
        )
        kept = result.safety_backup.artifact if result.safety_backup else None
        done.append(
            {
                "volume": name,
                "source": result.source,
                "safety_backup": kept,
                **result.facts.to_json(),
            }
        )
        if not rt.as_json:
            click.echo(
                f"restored volume {name} from {result.source}: {result.facts.files} "
                f"files, {result.facts.bytes} bytes"
            )
            if kept:
                click.echo(f"its previous content is kept as the backup {kept}")
    return done


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
    total = sum(result.timings.values())
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    click.echo(f"restored {plan.source.name} into {plan.database!r} in {total:.1f}s ({parts})")
    if plan.previous and not plan.drop_previous:
        click.echo(
            f"previous database kept as {plan.previous!r} (drop it with: dropdb {plan.previous})"
        )
