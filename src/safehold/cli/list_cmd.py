from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import catalog, naming
from ..model import BackupRecord
from ..operations.checks.verify import VerifyResult, read_verify
from ..operations.copy import holders
from ..operations.pitr.base import BaseBackup
from ..operations.pitr.prune import base_status, read_bases
from ..operations.runs import RunRecord, read_runs
from ..sinks.log import human_bytes
from ..storage import LocalStorage, Storage
from .chunked import chunked_records
from .flags import shared_options
from .locations import location_storage, locations, read_source
from .output import STATUS_STYLE, backups_table, sets_table
from .requests import ListRequest
from .runtime import runtime


@click.command("list")
@click.option("--sets", "only_sets", is_flag=True, help="one line per full-system backup set")
@click.option(
    "--runs", "only_runs", is_flag=True, help="the recorded runs (failed ones too), newest first"
)
@click.option(
    "--from",
    "source",
    metavar="LOCATION",
    help="list what this location ([locations.NAME]) holds instead of the local repository",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def list_cmd(
    ctx: click.Context, only_sets: bool, only_runs: bool, source: str | None, as_json: bool
) -> None:
    """List the backups in the repository, newest first.

    Files without a manifest show as "unverified/foreign"; unfinished files never show. Members
    of a full-system set (backup --all) show the set id; --sets lists the sets themselves.
    PITR base backups follow in their own table (kind "base", with the WAL segment their
    replay starts from).

    --from LOCATION lists a location's copies (nothing is written locally). When the local
    repository holds no backups and one location is configured, that one is listed.

    --runs lists the runs of backup, verify, drill, prune, copy and restore recorded in the
    repository (.safehold/runs/, kept 90 days): when, the command, ok/failed/interrupted, the
    exit code and the error, or what the run wrote.
    """
    ListRequest(only_sets, only_runs, source).check()
    if only_runs:
        with runtime(ctx, as_json=as_json) as rt:
            records = list(reversed(read_runs(LocalStorage(rt.settings.backup_dir))))
            if as_json:
                rt.emit_json([r.to_json() for r in records])
            else:
                _runs_table(records, rt.out, str(rt.settings.backup_dir))
        return
    show_backups(ctx, as_json, only_sets=only_sets, source=source)


def show_backups(
    ctx: click.Context, as_json: bool, *, only_sets: bool = False, source: str | None = None
) -> None:
    with runtime(ctx, as_json=as_json) as rt:
        local = LocalStorage(rt.settings.backup_dir)
        source = read_source(rt, local, source, strict=False)
        storage: Storage = local if source is None else location_storage(rt, source)
        records = catalog.scan(storage)
        if source is None:  # chunked targets' snapshots, listed with the files by time
            records = sorted([*records, *chunked_records(rt)], key=lambda r: r.created)
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
        # Verify results are records of the local repository, about its own copies.
        checks = {r.name: read_verify(local, r.name) if source is None else None for r in records}
        held = holders(locations(rt.settings)) if rt.settings.locations else None
        bases = [_base_row(storage, b, held, source) for b in reversed(read_bases(storage)[0])]
        if as_json:
            rows = [
                {
                    **_with_check(r.to_json(), checks[r.name]),
                    "target": _target(r, rt.settings.database_name()),
                    "locations": _places(r.name, held, source),
                }
                for r in reversed(records)
            ]
            rows += bases
            rows.sort(key=lambda row: str(row["created_utc"]), reverse=True)  # newest first
            rt.emit_json(rows)
        else:
            if records or not bases:
                shown = held if source is None else None  # its column starts with "local"
                backups_table(records, rt.out, storage.description, sets, checks, shown)
            if bases:
                _bases_table(bases, rt.out, storage.description)


def _target(record: BackupRecord, database: str) -> str | None:
    """The manifest's target; a dump without one: the database its name carries, else the
    configured one (the seed's names carry none)."""
    if record.manifest is not None:
        return record.manifest.target
    parsed = naming.parse(record.name)
    if parsed is not None and record.kind in ("database", "globals"):
        return parsed.target or database
    return parsed.target if parsed is not None else None


def _with_check(record: dict[str, object], check: VerifyResult | None) -> dict[str, object]:
    keys = ("level", "outcome", "checked_at", "error")
    return {**record, "verified": {k: check.to_json()[k] for k in keys} if check else None}


def _places(name: str, held: dict[str, list[str]] | None, source: str | None) -> list[str]:
    """Where a listed backup is: the repository listed first, then the locations holding it."""
    found = (held or {}).get(name, [])
    if source is None:
        return ["local", *found]
    return [source, *(place for place in found if place != source)]


def _base_row(
    storage: Storage, base: BaseBackup, held: dict[str, list[str]] | None, source: str | None
) -> dict[str, Any]:
    """A base backup as a ``list --json`` row: the logical rows' fields where they apply."""
    status, size = base_status(storage, base)
    return {
        "name": base.name,
        "kind": "base",
        "target": None,
        "created_utc": _iso(base.started),
        "created_local": base.started.astimezone().isoformat(timespec="seconds"),
        "finished_utc": _iso(base.finished),
        "size": size if size is not None else base.size,
        "raw_size": base.raw_size,
        "sha256": base.sha256,
        "compression": "zstd",
        "set_id": None,
        "encryption": base.encryption,
        "status": status,
        "start_segment": base.start_segment,
        "start_lsn": base.start_lsn,
        "stop_lsn": base.stop_lsn,
        "timeline": base.timeline,
        "file": base.data_key,
        "verified": None,
        "locations": _places(base.name, held, source),
    }


def _bases_table(rows: list[dict[str, Any]], console: Console, where: str) -> None:
    title = f"base backups (PITR) in {where}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("NAME", "KIND", "CREATED (UTC)", "SIZE", "WAL FROM", "TIMELINE", "STATUS"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"],
            "base",
            row["created_utc"][:19].replace("T", " "),
            human_bytes(row["size"]),
            row["start_segment"],
            str(row["timeline"]),
            f"[{STATUS_STYLE[row['status']]}]{row['status']}[/]",
        )
    console.print(table)


RUN_STYLE = {"ok": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def _runs_table(records: list[RunRecord], console: Console, where: str) -> None:
    if not records:
        console.print(f"no recorded runs in {where}")
        return
    table = Table(title=f"runs in {where}", title_justify="left", box=None, pad_edge=False)
    for column in ("STARTED (UTC)", "COMMAND", "OUTCOME", "EXIT", "TOOK", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL")
    for r in records:
        took = "-" if r.duration_s is None else f"{r.duration_s:.1f}s"
        outcome = "killed?" if r.dead() else r.outcome
        detail = r.error or ", ".join(r.produced)
        table.add_row(
            r.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            escape(r.command_line),
            f"[{RUN_STYLE.get(r.outcome, 'red')}]{outcome}[/]",
            "-" if r.exit_code is None else str(r.exit_code),
            took,
            escape(detail),
        )
    console.print(table)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
