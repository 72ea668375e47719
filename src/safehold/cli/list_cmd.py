from __future__ import annotations

import click

from .. import catalog
from ..storage import LocalStorage
from .output import backups_table
from .runtime import runtime, shared_options


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the backups in the repository, newest first.

    Files without a manifest show as "unverified/foreign"; unfinished files never show.
    """
    show_backups(ctx, as_json)


def show_backups(ctx: click.Context, as_json: bool) -> None:
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        records = catalog.scan(storage)
        if as_json:
            rt.emit_json([r.to_json() for r in reversed(records)])
        else:
            backups_table(records, rt.out, storage.description)
