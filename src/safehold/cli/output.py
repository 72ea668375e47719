"""Tables shared by several commands."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

import click
from rich.console import Console
from rich.table import Table

from ..catalog import set_status
from ..errors import IntegrityError
from ..model import BackupRecord, BackupSet
from ..operations.checks.verify import VerifyResult
from ..sinks.log import human_bytes

STATUS_STYLE = {"ok": "green", "unverified/foreign": "yellow", "damaged": "red", "missing": "red"}


VERIFY_STYLE = {"ok": "green", "unverifiable": "yellow", "failed": "red"}


def backups_table(
    records: list[BackupRecord],
    console: Console,
    where: str,
    sets: list[BackupSet],
    checks: Mapping[str, VerifyResult | None] | None = None,
    held: Mapping[str, list[str]] | None = None,
) -> None:
    """Newest first; members of a full-system set show its id, and "(incomplete)" when the set
    record is missing because a member failed; VERIFIED is the last verify of each backup."""
    if not records:
        console.print(f"no backups in {where}")
        return
    complete = {s.id for s in sets}
    table = Table(title=f"backups in {where}", title_justify="left", box=None, pad_edge=False)
    for column in (
        "NAME",
        "KIND",
        "TARGET",
        "SET",
        "CREATED (UTC)",
        "CREATED (LOCAL)",
        "SIZE",
        "SHA256",
        "STATUS",
        "VERIFIED",
        *(["LOCATIONS"] if held is not None else []),
    ):
        table.add_column(column, no_wrap=column != "NAME")
    for record in reversed(records):
        manifest = record.manifest
        set_id = manifest.set_id if manifest else None
        table.add_row(
            record.name,
            # A safety copy is the content a volume restore replaced, not a backup of the volume.
            "[yellow]safety[/]" if record.kind == "safety" else record.kind,
            manifest.target if manifest else "?",
            "-" if set_id is None else set_id + ("" if set_id in complete else " (incomplete)"),
            record.created.strftime("%Y-%m-%d %H:%M:%S"),
            record.created.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
            human_bytes(record.size) if record.size is not None else "-",
            record.sha256[:12] if record.sha256 else "-",
            f"[{STATUS_STYLE[record.status]}]{record.status}[/]",
            _verified((checks or {}).get(record.name)),
            *([",".join(["local", *held.get(record.name, [])])] if held is not None else []),
        )
    console.print(table)


def _verified(check: VerifyResult | None) -> str:
    if check is None:
        return "-"
    style = VERIFY_STYLE.get(check.outcome, "red")
    return f"[{style}]{check.outcome}[/] {check.level} {check.checked_at:%Y-%m-%d %H:%M}"


def sets_table(
    sets: list[BackupSet], records: list[BackupRecord], console: Console, where: str
) -> None:
    if not sets:
        console.print(f"no full-system backup sets in {where} (safehold backup --all makes one)")
        return
    by_name = {r.name: r for r in records}
    table = Table(title=f"backup sets in {where}", title_justify="left", box=None, pad_edge=False)
    for column in ("SET", "CREATED (UTC)", "DATABASE", "VOLUMES", "SIZE", "TOOK", "STATUS"):
        table.add_column(column, no_wrap=True)
    for backup_set in reversed(sets):
        status = set_status(backup_set, by_name)
        size = sum(by_name[m].size or 0 for m in backup_set.members if m in by_name)
        table.add_row(
            backup_set.id,
            backup_set.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            backup_set.database or "-",
            str(len(backup_set.volumes)),
            human_bytes(size),
            f"{backup_set.duration_s:.1f}s",
            f"[{STATUS_STYLE['ok' if status == 'ok' else 'damaged']}]{status}[/]",
        )
    console.print(table)


class ReportedFailure(click.ClickException):
    """An IntegrityError after ``--json`` already printed the results: the exit code and the
    error lines on stderr are the same, but no second JSON document goes to stdout."""

    exit_code = IntegrityError.exit_code

    def __init__(self, error: IntegrityError) -> None:
        super().__init__(error.message)
        self.hint = error.hint

    def show(self, file: IO[Any] | None = None) -> None:
        prefix = "" if sys.stderr.isatty() else f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} ERROR   "
        click.echo(f"{prefix}error: {self.message}", err=True)
        if self.hint:
            click.echo(f"{prefix}hint: {self.hint}", err=True)


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days"
