from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..operations.report.gather import DEFAULT_DAYS, gather_report
from ..operations.report.page import render_html, write_html
from ..storage import LocalStorage
from .chunked import chunked_records
from .flags import shared_options
from .requests import ReportRequest
from .runtime import runtime


@click.command("report")
@click.option(
    "--html",
    "-o",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="write the report page here (one self-contained HTML file)",
)
@click.option(
    "--days",
    type=click.IntRange(min=0),
    default=DEFAULT_DAYS,
    show_default=True,
    help="how far back the charts and tables go (0: the whole history)",
)
@click.option(
    "--fleet",
    is_flag=True,
    help="one page for every host prefix in the location's bucket, a section per host",
)
@click.option("--location", metavar="NAME", help="--fleet: the location whose bucket to read")
@click.option("--json", "as_json", is_flag=True, help="print the gathered data as JSON")
@shared_options
@click.pass_context
def report_cmd(
    ctx: click.Context,
    html_path: Path | None,
    days: int,
    fleet: bool,
    location: str | None,
    as_json: bool,
) -> None:
    """One page about the backups, to look at rather than read.

    Backup sizes and durations over time per target, the RPO compliance timeline (periods when
    the newest good backup was older than the RPO in red), drill recovery times against the RTO
    lines, the latest failures and the newest backups, under the current status. Charts are
    inline SVG: the page needs no network, script or font. With --json the same data is printed
    (also when --html writes the page).

    --fleet: every host of the location's bucket on one page (docs/guide/fleet.md).
    """
    ReportRequest(html_path, days, as_json).check()
    if fleet or location:
        from .fleet import FleetRequest, report_fleet

        FleetRequest(fleet, location, False).check()
        with runtime(ctx, as_json=as_json) as rt:
            report_fleet(rt, location, html_path, as_json)
        return
    with runtime(ctx, as_json=as_json) as rt:
        settings = rt.settings
        storage = LocalStorage(settings.backup_dir)
        report = gather_report(
            storage,
            now=datetime.now(UTC),
            objectives=settings.objectives_s(),
            database=settings.required_databases(),
            volumes=settings.volumes.names(),
            days=days,
            snapshots=chunked_records(rt),
        )
        secrets = [settings.password]
        written = None
        if html_path is not None:
            written = write_html(html_path, render_html(report, secrets))
            rt.sink_info(
                f"report of {len(report.backups)} backup(s), {len(report.drills)} drill(s) and "
                f"{len(report.failures)} failure(s) written"
            )
        if as_json:
            data = report.to_json() | {"html": str(written) if written else None}
            rt.emit_json(_redacted(data, secrets))
        elif written is not None:
            click.echo(str(written))


def _redacted(value: Any, secrets: list[str | None]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, "[redacted]")
        return value
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, secrets) for v in value]
    return value
