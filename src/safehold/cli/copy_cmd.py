from __future__ import annotations

import click

from .. import catalog
from ..errors import UsageError
from ..storage import LocalStorage
from .locations import copy_to, locations
from .runtime import runtime, shared_options


@click.command("copy")
@click.argument("names", nargs=-1, metavar="[BACKUP...]")
@click.option(
    "--to",
    "to",
    multiple=True,
    required=True,
    metavar="LOCATION",
    help="a configured location ([locations.NAME]); repeatable",
)
@click.option("--latest", is_flag=True, help="only the newest good backup of each target")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def copy_cmd(
    ctx: click.Context, names: tuple[str, ...], to: tuple[str, ...], latest: bool, as_json: bool
) -> None:
    """Copy backups from the local repository to other locations (S3-compatible buckets).

    Without BACKUP names: every good backup the location does not hold yet (--latest: only the
    newest of each target, e.g. for the monthly archive). Each copy streams once, is checked
    against the manifest's sha256 before the upload completes (a half upload is never visible),
    and is followed by its manifest and the records of the sets it completes. Already present
    copies are skipped. The location's bucket lock is held meanwhile.
    """
    if names and latest:
        raise UsageError("give BACKUP names or --latest, not both")
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        targets = locations(rt.settings, to)
        records = [r for r in catalog.scan(storage) if r.status == "ok"]
        if latest:
            chosen = sorted(r.name for r in catalog.newest_by_target(records).values())
        else:
            chosen = list(names) or [r.name for r in records]
        if not chosen:
            raise UsageError(f"no good backup to copy in {storage.description}")
        results = copy_to(rt, storage, targets, chosen)
        if as_json:
            rt.emit_json([r.to_json() for r in results])
            return
        for r in results:
            click.echo(
                f"{r.location}: {len(r.copied)} copied ({r.bytes} bytes), "
                f"{len(r.skipped)} already there"
            )
