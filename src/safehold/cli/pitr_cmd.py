"""``safehold pitr``: archiving setup, base backups, chain check, restore to a point in time."""

from __future__ import annotations

from typing import Any

import click

from ..operations.pitr import base as pitr
from ..operations.pitr import setup as pitr_setup
from .flags import shared_options
from .physical import (
    COMMAND_HELP,
    PitrRequest,
    config_file,
    pitr_options,
    run_base_backup,
    run_restore,
)
from .runtime import runtime
from .wal_places import wal_archive


@click.group("pitr")
def pitr_cmd() -> None:
    """Point-in-time recovery: WAL archiving setup, base backups, chain check and restore."""


@pitr_cmd.command("setup")
@click.option("--apply", is_flag=True, help="set them on the server with ALTER SYSTEM")
@click.option("--command", "command", help=COMMAND_HELP)
@shared_options
@click.pass_context
def setup_cmd(ctx: click.Context, apply: bool, command: str | None) -> None:
    """Print (or with --apply, set) what the server needs to archive WAL into BACKUP_DIR."""
    with runtime(ctx) as rt:
        settings = pitr_setup.server_settings(
            command or pitr_setup.which_safehold(), rt.settings.backup_dir, config_file(rt)
        )
        for name, value in settings.items():
            rt.out.print(f"{name} = '{value}'", markup=False, highlight=False)
        if apply:
            pending = pitr_setup.apply_settings(rt.settings.pg_target(), settings)
            if pending:
                rt.out.print(f"restart the server to apply: {', '.join(pending)}")
            else:
                rt.out.print("applied; no restart needed")
        rt.out.print(
            "note: the server's OS user must be able to write the repository folder",
            highlight=False,
        )


@pitr_cmd.command("base-backup")
@click.option("--json", "as_json", is_flag=True, help="print the base backup's record")
@shared_options
@click.pass_context
def base_backup_cmd(ctx: click.Context, as_json: bool) -> None:
    """Take a physical base backup into base/ in BACKUP_DIR (same as 'backup --physical')."""
    with runtime(ctx, as_json=as_json) as rt:
        run_base_backup(rt, as_json)


@pitr_cmd.command("check")
@click.option("--verify", is_flag=True, help="also check each base backup's size and sha256")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def check_cmd(ctx: click.Context, verify: bool, as_json: bool) -> None:
    """Check that the archived WAL from each base backup to the newest segment is continuous,
    following timeline switches; gaps are shown with the time window they lose. With --verify,
    each base backup's stored file is read and checked against its record too. Exit 6 when
    anything is missing or damaged."""
    with runtime(ctx, as_json=as_json) as rt:
        archive = wal_archive(rt, fetching=True)
        results = pitr.check(archive)
        rows: list[dict[str, Any]] = []
        for base, report in results:
            damage = pitr.verify_base(archive.primary, base) if verify else None
            if damage is not None:
                rows.append({"base": base.name, "state": "damaged", "damage": damage})
                continue
            if report is None:
                rows.append({"base": base.name, "state": "other timeline"})
                continue
            rows.append(
                {
                    "base": base.name,
                    "state": "ok" if report.ok else "gap",
                    "from": report.start,
                    "to": report.newest,
                    "segments": report.segments,
                    "timelines": list(report.timelines),
                    "missing": list(report.missing),
                    "gaps": [gap.describe() for gap in report.gaps],
                }
            )
        if as_json:
            rt.emit_json(rows)
        for row in [] if as_json else rows:
            line = f"{row['base']}: {row['state']}"
            if "damage" in row:
                line += f": {row['damage']}"
            elif "from" in row:
                line += f", WAL {row['from']} .. {row['to'] or '-'}, {row['segments']} segments"
                line += ", timelines " + " > ".join(str(t) for t in row["timelines"])
            else:
                line += " (a later recovery branched away: it cannot reach the newest timeline)"
            rt.out.print(line, highlight=False)
            for gap in row.get("gaps", []):
                rt.out.print(f"  {gap}", highlight=False)
    if any(row["state"] in ("gap", "damaged") for row in rows):
        ctx.exit(6)


@pitr_cmd.command("restore")
@pitr_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def restore_cmd(ctx: click.Context, pitr_request: PitrRequest, as_json: bool) -> None:
    """Restore a base backup and replay archived WAL to a point in time (same as
    'safehold restore --pitr')."""
    with runtime(ctx, as_json=as_json) as rt:
        run_restore(rt, pitr_request)
