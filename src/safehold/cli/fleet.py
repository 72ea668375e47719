"""``status --fleet`` and ``report --fleet``: every host of this host's bucket, read from the
location (``operations/report/fleet.py``), printed as one table, one JSON object or one page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..operations.report.fleet import FleetReport, HostStatus, read_fleet
from ..operations.report.fleet_page import render_fleet_html
from ..operations.report.page import write_html
from .locations import automatic, locations
from .output import age_text
from .runtime import Runtime

STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "magenta"}


@dataclass(frozen=True)
class FleetRequest:
    """``--fleet`` and the flags that go with it (or not)."""

    fleet: bool
    location: str | None
    metrics_file: bool

    def check(self) -> None:
        if self.location and not self.fleet:
            raise UsageError("--location picks the bucket of --fleet: add --fleet")
        if self.metrics_file:
            raise UsageError(
                "--metrics-file describes this host: not with --fleet",
                hint="each host writes its own metrics; run 'safehold status --metrics-file' there",
            )


def fleet_of(rt: Runtime, name: str | None) -> FleetReport:
    """The fleet beside this host's prefix in location ``name`` (default: the only location,
    else the only one that takes every backup)."""
    from ..storage.s3 import S3Storage

    places = locations(rt.settings, [name] if name else [])
    if not places:
        raise UsageError(
            "the fleet is read from an S3 location, and none is configured",
            hint="add a [locations.NAME] table with the bucket and this host's prefix",
        )
    if name is None and len(places) > 1:
        places = automatic(places)
        if len(places) != 1:
            names = ", ".join(spec.name for spec in rt.settings.locations)
            raise UsageError(
                "several locations are configured: which bucket holds the fleet?",
                hint=f"add --location NAME (one of {names})",
            )
    place = places[0]
    assert isinstance(place.storage, S3Storage)  # every [locations.NAME] is S3
    report = read_fleet(
        place.storage,
        location=place.name,
        now=datetime.now(UTC),
        objectives=rt.settings.objectives_s(),
    )
    rt.sink_info(
        f"{len(report.hosts)} host(s) read from {report.where} in {report.read_s:.2f}s "
        f"({sum(h.keys for h in report.hosts)} objects listed)"
    )
    return report


def status_fleet(rt: Runtime, name: str | None, as_json: bool) -> int:
    """Print the fleet's status; returns the exit code (the worst host's)."""
    report = fleet_of(rt, name)
    if as_json:
        rt.emit_json(report.to_json())
    else:
        show_fleet(report, rt.out)
    return report.exit_code


def report_fleet(rt: Runtime, name: str | None, html_path: Path | None, as_json: bool) -> None:
    report = fleet_of(rt, name)
    written = None
    if html_path is not None:
        written = write_html(html_path, render_fleet_html(report, [rt.settings.password]))
        rt.sink_info(f"fleet page of {len(report.hosts)} host(s) written")
    if as_json:
        rt.emit_json(report.to_json() | {"html": str(written) if written else None})
    elif written is not None:
        rt.out.print(str(written), highlight=False, soft_wrap=True)


def show_fleet(report: FleetReport, console: Console) -> None:
    goals = report.objectives
    console.print(
        f"fleet: {report.level.upper()} ({len(report.hosts)} host(s) in {report.where}, "
        f"location {report.location}; objectives: each host's own, else RPO database "
        f"{goals.rpo('database', '') / 3600:g} h, volumes {goals.rpo('volume', '') / 3600:g} h)",
        highlight=False,
        soft_wrap=True,
    )
    table = Table(box=None, pad_edge=False)
    for column in ("HOST", "TARGET", "LAST BACKUP", "AGE", "RPO", "STATE", "LAST DRILL"):
        table.add_column(column, no_wrap=True)
    for host in report.hosts:
        for i, row in enumerate(_rows(host)):
            table.add_row(host.host + _mark(report, host) if i == 0 else "", *row)
    console.print(table, highlight=False)
    for host in report.hosts:
        if host.error:
            console.print(
                f"[{STYLE['unknown']}]{host.host}: UNKNOWN: {host.error}[/]",
                highlight=False,
                soft_wrap=True,
            )
        for t in host.status.targets if host.status else []:
            for reason in t.reasons:
                console.print(
                    f"[{STYLE[t.level]}]{host.host} {t.kind} {t.target}: {reason}[/]",
                    highlight=False,
                    soft_wrap=True,
                )
        for note in host.status.notes if host.status else []:
            console.print(f"{host.host}: {note}", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print(
        f"exit {report.exit_code} ({report.level.upper()}: the worst host)", highlight=False
    )


def _mark(report: FleetReport, host: HostStatus) -> str:
    return " (this host)" if host.host == report.this_host else ""


def _rows(host: HostStatus) -> list[tuple[str, ...]]:
    if host.status is None:
        return [("-", "-", "-", "-", _level("unknown"), "-")]
    if not host.status.targets:
        return [("-", "none", "-", "-", _level(host.level), "-")]
    rows: list[tuple[str, ...]] = []
    for t in host.status.targets:
        newest = t.newest
        drill = "-"
        if t.drill is not None:
            took = f"{t.drill_s:.1f}s" if t.drill_s is not None else "FAILED"
            drill = f"{t.drill.started_at:%Y-%m-%d %H:%M} {t.drill.outcome} {took}"
        rows.append(
            (
                f"{t.kind} {t.target}",
                f"{newest.created:%Y-%m-%d %H:%M}" if newest else "none",
                "-" if t.age_s is None else age_text(t.age_s),
                "-" if t.rpo_s is None else f"{t.rpo_s / 3600:g} h",
                _level(t.level),
                drill,
            )
        )
    return rows


def _level(level: str) -> str:
    return f"[{STYLE[level]}]{level.upper()}[/]"
