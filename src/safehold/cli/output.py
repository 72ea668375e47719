"""Tables shared by several commands."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..model import BackupRecord
from ..sinks.log import human_bytes

STATUS_STYLE = {"ok": "green", "unverified/foreign": "yellow", "damaged": "red", "missing": "red"}


def backups_table(records: list[BackupRecord], console: Console, where: str) -> None:
    if not records:
        console.print(f"no backups in {where}")
        return
    table = Table(title=f"backups in {where}", title_justify="left", box=None, pad_edge=False)
    for column in (
        "NAME",
        "KIND",
        "TARGET",
        "CREATED (UTC)",
        "CREATED (LOCAL)",
        "SIZE",
        "SHA256",
        "STATUS",
    ):
        table.add_column(column, no_wrap=column != "NAME")
    for record in reversed(records):
        manifest = record.manifest
        table.add_row(
            record.name,
            record.kind,
            manifest.target if manifest else "?",
            record.created.strftime("%Y-%m-%d %H:%M:%S"),
            record.created.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
            human_bytes(record.size) if record.size is not None else "-",
            record.sha256[:12] if record.sha256 else "-",
            f"[{STATUS_STYLE[record.status]}]{record.status}[/]",
        )
    console.print(table)
