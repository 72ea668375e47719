from __future__ import annotations

import click

from ..errors import UsageError
from ..operations.restore import RestoreResult, restore_database
from ..storage import LocalStorage
from .list_cmd import show_backups
from .runtime import runtime, shared_options


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
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore the database safely: verify, restore into a staging database, check, swap in.

    The replaced database is kept as <name>_pre_restore_<time> unless --drop-previous; a failed
    restore leaves the live database exactly as it was.
    """
    if list_only:
        show_backups(ctx, as_json)
        return
    if database_ref is None:
        raise UsageError("nothing to restore", hint="use --database FILE|NAME|latest, or --list")
    with runtime(ctx, as_json=as_json) as rt:
        overrides: dict[str, object] = {
            "target_db": target_db,
            "drop_previous": drop_previous,
            "no_owner": no_owner,
        }
        if jobs is not None:
            overrides["jobs"] = jobs
        result = restore_database(
            rt.settings.pg_target(),
            LocalStorage(rt.settings.backup_dir),
            database_ref,
            rt.settings.restore_options(**overrides),
            dry_run=dry_run,
            sink=rt.sink,
        )
        _show(result, rt.emit_json if as_json else None)


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
