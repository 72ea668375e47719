from __future__ import annotations

import click

from .. import catalog
from ..operations.copy import holders
from ..operations.verify import VerifyResult, read_verify
from ..storage import LocalStorage
from .locations import locations
from .output import backups_table, sets_table
from .runtime import runtime, shared_options


@click.command("list")
@click.option("--sets", "only_sets", is_flag=True, help="one line per full-system backup set")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def list_cmd(ctx: click.Context, only_sets: bool, as_json: bool) -> None:
    """List the backups in the repository, newest first.

    Files without a manifest show as "unverified/foreign"; unfinished files never show. Members
    of a full-system set (backup --all) show the set id; --sets lists the sets themselves.
    """
    show_backups(ctx, as_json, only_sets=only_sets)


def show_backups(ctx: click.Context, as_json: bool, *, only_sets: bool = False) -> None:
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        records = catalog.scan(storage)
        sets = catalog.read_sets(storage)
        if only_sets:
            by_name = {r.name: r for r in records}
            if as_json:
                rt.emit_json(
                    [
                        {**s.to_json(), "status": catalog.set_status(s, by_name)}
                        for s in reversed(sets)
                    ]
                )
            else:
                sets_table(sets, records, rt.out, storage.description)
            return
        checks = {r.name: read_verify(storage, r.name) for r in records}
        held = holders(locations(rt.settings)) if rt.settings.locations else None
        if as_json:
            rt.emit_json(
                [
                    {
                        **_with_check(r.to_json(), checks[r.name]),
                        "locations": ["local", *(held or {}).get(r.name, [])],
                    }
                    for r in reversed(records)
                ]
            )
        else:
            backups_table(records, rt.out, storage.description, sets, checks, held)


def _with_check(record: dict[str, object], check: VerifyResult | None) -> dict[str, object]:
    keys = ("level", "outcome", "checked_at", "error")
    return {**record, "verified": {k: check.to_json()[k] for k in keys} if check else None}
