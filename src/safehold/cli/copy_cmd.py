from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import click

from .. import catalog
from ..errors import UsageError
from ..operations.copy import representatives
from ..retention import Period
from ..storage import LocalStorage
from .flags import shared_options
from .locations import copy_to, locations
from .requests import CopyRequest
from .runtime import runtime


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
@click.option(
    "--representative",
    type=click.Choice(["monthly", "yearly"]),
    help="only what retention's monthly (yearly) rule keeps for each finished month (year): "
    "each target's newest good backup in it, with the sets those belong to",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def copy_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    to: tuple[str, ...],
    latest: bool,
    representative: str | None,
    as_json: bool,
) -> None:
    """Copy backups from the local repository to other locations (S3-compatible buckets).

    Without BACKUP names: every good backup the location does not hold yet (--latest: only the
    newest of each target; --representative monthly: each finished month's representatives, what
    the scheduled monthly archive copies). Each copy streams once, is checked
    against the manifest's sha256 before the upload completes (a half upload is never visible),
    and is followed by its manifest and the records of the sets it completes. Already present
    copies are skipped. The location's bucket lock is held meanwhile.
    """
    asked = CopyRequest(names, latest, cast("Period | None", representative))
    asked.check()
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        targets = locations(rt.settings, to)
        records = [r for r in catalog.scan(storage) if r.status == "ok"]
        if asked.representative:
            period = asked.representative
            chosen = representatives(storage, period, datetime.now(UTC))
            if not chosen:
                # Not a failure: the first month after setup has no finished month yet.
                rt.sink_warning(f"no finished {period[:-2]} has a good backup yet: nothing copied")
                return
        elif latest:
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
