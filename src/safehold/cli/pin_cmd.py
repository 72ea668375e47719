from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from .. import catalog
from ..chunkstore.layout import is_snapshot_id
from ..operations.pins import pin, read_pins, unpin
from ..storage import LocalStorage
from .chunk_places import open_for_reading
from .flags import shared_options
from .requests import PinRequest
from .runtime import runtime


@click.command("pin")
@click.argument("name", required=False)
@click.option("--note", default="", help="why it is pinned (shown by 'safehold pin')")
@click.option(
    "--keep-until",
    metavar="DATE",
    help="only until DATE (YYYY-MM-DD: through that day, UTC; or an ISO 8601 time)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def pin_cmd(
    ctx: click.Context, name: str | None, note: str, keep_until: str | None, as_json: bool
) -> None:
    """Pin a backup so that prune never removes it; without NAME, list the pins.

    NAME may be a snapshot id (a chunked target's backup): its pin is an object in the chunk
    store (chunks/pins/), so every host sharing the store and 'snapshots prune' see it.

    NAME is a backup as 'safehold list' shows it, or a latest link name (the backup it points
    at). The pin is .safehold/pins/NAME.json in the repository; 'safehold unpin NAME' removes it.
    --keep-until DATE pins it through DATE only; after that prune's retention rules decide.
    """
    asked = PinRequest(name, note, keep_until)
    asked.check()
    until = asked.until()
    with runtime(ctx, as_json=as_json) as rt:
        storage = LocalStorage(rt.settings.backup_dir)
        if name is not None and is_snapshot_id(name):  # a chunked target's backup
            snap = open_for_reading(rt).pin(name, until, note)
            rt.sink_info(
                f"pinned snapshot {name} "
                + (f"until {until:%Y-%m-%d %H:%M} UTC" if until else "for good")
            )
            if as_json:
                rt.emit_json(
                    {
                        "snapshot": name,
                        "until": until.isoformat() if until else None,
                        "note": note,
                        "pinned_at": snap.at.isoformat(),
                    }
                )
            return
        if name is not None:
            timeout = rt.settings.lock_timeout
            made = pin(storage, name, note=note, until=until, lock_timeout=timeout, sink=rt.sink)
            if as_json:
                rt.emit_json(made.to_json())
            return
        pins = read_pins(storage) if storage.root.is_dir() else {}
        present = {r.name for r in catalog.scan(storage)} if pins else set()
        if as_json:
            rt.emit_json([{**p.to_json(), "present": p.artifact in present} for p in pins.values()])
            return
        if not pins:
            rt.out.print(f"no pinned backups in {storage.description}")
            return
        table = Table(
            title=f"pinned in {storage.description}", title_justify="left", box=None, pad_edge=False
        )
        for column in ("NAME", "PINNED (UTC)", "UNTIL (UTC)", "BY", "NOTE"):
            table.add_column(column, no_wrap=column != "NOTE")
        now = datetime.now(UTC)
        for p in sorted(pins.values(), key=lambda p: p.artifact):
            gone = "" if p.artifact in present else " (gone)"
            ends = "for good" if p.until is None else f"{p.until:%Y-%m-%d %H:%M}"
            ends += "" if p.holds(now) else " (ended)"
            table.add_row(p.artifact + gone, f"{p.pinned_at:%Y-%m-%d %H:%M}", ends, p.by, p.note)
        rt.out.print(table)


@click.command("unpin")
@click.argument("name")
@shared_options
@click.pass_context
def unpin_cmd(ctx: click.Context, name: str) -> None:
    """Remove the pin of a backup, so that prune applies the retention policy to it again.

    Unpinning a backup that is not pinned is not an error (it says so).
    """
    with runtime(ctx) as rt:
        if is_snapshot_id(name):
            count = open_for_reading(rt).unpin(name)
            rt.sink_info(
                f"snapshot {name}: {count} pin(s) removed"
                if count
                else f"snapshot {name} was not pinned"
            )
            return
        storage = LocalStorage(rt.settings.backup_dir)
        unpin(storage, name, lock_timeout=rt.settings.lock_timeout, sink=rt.sink)
