from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..config import Settings
from ..operations.copy import holders
from ..operations.pitr.status import LEVELS, Archiver, WalStatus, read_archiver, read_wal_status
from ..operations.report.metrics import write_metrics
from ..operations.report.rehearsal import RehearsalStatus
from ..operations.report.runs import RunsStatus, read_runs_status
from ..operations.report.status import StatusReport, read_status
from ..sinks.log import human_bytes
from ..storage import LocalStorage
from .chunked import chunked_records
from .flags import shared_options
from .locations import automatic, locations
from .output import age_text
from .runtime import runtime

STYLE = {"ok": "green", "warning": "yellow", "critical": "red"}


@click.command("status")
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="also write Prometheus text format here (node_exporter textfile collector)",
)
@click.option(
    "--fleet",
    is_flag=True,
    help="every host prefix beside this host's in the location's bucket, read-only: one table, "
    "exit code of the worst host",
)
@click.option("--location", metavar="NAME", help="--fleet: the location whose bucket to read")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def status_cmd(
    ctx: click.Context,
    metrics_file: Path | None,
    fleet: bool,
    location: str | None,
    as_json: bool,
) -> None:
    """Backups against the recovery objectives, like a monitoring plugin.

    For the database and each volume: the newest good backup and its age (against the RPO),
    size and its trend, the last verify, the last drill and its measured recovery time
    (against the RTO). With point-in-time recovery: the newest archived WAL and its age (the
    achieved RPO; "stalled" past objectives.wal_stall_minutes), the server's archiver
    (pg_stat_archiver: "failing" is critical) and the newest base backup. The runs line: the
    newest run of backup, verify, drill, prune and copy failed (warning).

    Exit code 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (status itself failed: config error,
    unreadable repository; with --json, an object with level "unknown").

    --fleet: every host of the bucket (docs/guide/fleet.md), each judged like this, read
    without lock or write; a host that cannot be read is UNKNOWN.
    """
    if fleet or location:
        from .fleet import FleetRequest, status_fleet

        FleetRequest(fleet, location, metrics_file is not None).check()
        with runtime(ctx, as_json=as_json) as rt:
            code = status_fleet(rt, location, as_json)
        ctx.exit(code)
    with runtime(ctx, as_json=as_json) as rt:
        settings = rt.settings
        storage = LocalStorage(settings.backup_dir)
        targets = locations(settings) if settings.locations else []
        now = datetime.now(UTC)
        report = read_status(
            storage,
            now=now,
            objectives=settings.objectives_s(),
            database=settings.required_databases(),
            volumes=settings.volumes.names(),
            copies=holders(targets) if targets else None,
            expected=tuple(t.name for t in automatic(targets)),
            wal_stall_s=settings.objectives.wal_stall_minutes * 60,
            snapshots=chunked_records(rt),
        )
        report = _with_archiver(report, storage, settings, now)
        ran = read_runs_status(storage, now)
        level = LEVELS[max(LEVELS.index(report.level), LEVELS.index(ran.level) if ran else 0)]
        if metrics_file is not None:
            write_metrics(report, metrics_file, ran)
        breached = [t for t in report.targets if t.breached]  # each against its own RPO
        problems = [f"{t.kind} {t.target}: {', '.join(t.reasons)}" for t in breached]
        pitr = report.wal
        if pitr is not None and pitr.level != "ok":
            problems.append(f"wal {pitr.state}: {', '.join(pitr.reasons)}")
        if problems:
            rt.alert(
                "RPO breached" if breached else f"PITR: WAL {pitr.state if pitr else ''}",
                "; ".join(problems),
                hint="check the schedule and the last backup runs ('safehold list', the log)"
                if breached
                else "check archive_command and pg_stat_archiver on the server, and the log",
            )
        if as_json:
            rt.emit_json(report.to_json() | {"level": level, "runs": ran and ran.to_json()})
        else:
            _show(report, level, rt.out)
            if ran is not None:
                _show_runs(ran, now, rt.out)
    # After the runtime closed: a warning is a result to report, not a failure to log.
    ctx.exit(LEVELS.index(level))


def _with_archiver(
    report: StatusReport, storage: LocalStorage, settings: Settings, now: datetime
) -> StatusReport:
    """The WAL line judged with the server's archiver too. The server is asked whatever the
    repository holds (an archiver failing from its first segment leaves nothing there); not
    reaching it is a note on the WAL line, and nothing at all without one."""
    archiver: Archiver | None = None
    notes: tuple[str, ...] = ()
    try:
        archiver = read_archiver(settings.pg_target())
    except Exception as exc:
        why = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        notes = (f"the server's archiver was not checked: {why}",)
    stall_s = settings.objectives.wal_stall_minutes * 60
    wal = read_wal_status(storage, now, stall_s, archiver, notes)
    return dataclasses.replace(report, wal=wal)


def _show(report: StatusReport, level: str, console: Console) -> None:
    goals = report.objectives
    table = Table(
        title=f"status: {level.upper()} (RPO database {goals.rpo('database', '') / 3600:g} h, "
        f"volumes {goals.rpo('volume', '') / 3600:g} h; RTO database "
        f"{goals.rto_database_s / 60:g} min, volumes {goals.rto_volumes_s / 60:g} min, full "
        f"{goals.rto_full_s / 60:g} min)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for column in ("TARGET", "LAST BACKUP", "AGE", "SIZE (TREND)", "VERIFIED", "DRILL", "STATE"):
        table.add_column(column, no_wrap=True)
    for t in report.targets:
        newest = t.newest
        trend = ""
        if newest and newest.size and t.previous_size:
            trend = f" ({(newest.size - t.previous_size) / t.previous_size:+.0%})"
        verify = "-" if t.verify is None else f"{t.verify.outcome} ({t.verify.level})"
        drill = "-"
        if t.drill is not None:
            drill = f"{t.drill_s:.1f}s" if t.drill_s is not None else "failed"
        table.add_row(
            f"{t.kind} {t.target}",
            newest.created.strftime("%Y-%m-%d %H:%M") if newest else "none",
            "-" if t.age_s is None else f"{t.age_s / 3600:.1f} h",
            (human_bytes(newest.size) if newest and newest.size else "-") + trend,
            verify,
            drill,
            f"[{STYLE[t.level]}]{t.level}[/]",
        )
    console.print(table)
    for t in report.targets:
        for reason in t.reasons:
            console.print(f"[{STYLE[t.level]}]{t.kind} {t.target}: {reason}[/]")
        for note in t.notes:
            console.print(f"{t.kind} {t.target}: {note}")
    if report.wal is not None:
        _show_wal(report.wal, console)
    if report.rehearsal is not None:
        _show_rehearsal(report.rehearsal, console)
    for note in report.notes:
        console.print(note)


def _show_wal(pitr: WalStatus, console: Console) -> None:
    segment = pitr.newest_segment or "none"
    age = "-" if pitr.age_s is None else age_text(pitr.age_s)
    base = pitr.newest_base
    based = f"{base.name} ({age_text(pitr.base_age_s or 0.0)} old)" if base else "none"
    console.print(
        f"wal: newest segment {segment}, last archived {age} ago (RPO for PITR; stalled after "
        f"{pitr.stall_s / 60:g} min); newest base backup {based}; "
        f"[{STYLE[pitr.level]}]{pitr.state}[/]"
    )
    archiver = pitr.archiver
    if archiver is not None:
        failed = f", {archiver.failed_count} failed" if archiver.failed_count else ""
        console.print(
            f"wal: server archiver (archive_mode {archiver.mode}): {archiver.archived_count} "
            f"archived{failed}, {'FAILING' if archiver.failing else 'not failing'}"
        )
    for reason in pitr.reasons:
        console.print(f"[{STYLE[pitr.level]}]wal: {reason}[/]")
    for note in pitr.notes:
        console.print(f"wal: {note}")


def _show_runs(ran: RunsStatus, now: datetime, console: Console) -> None:
    newest = [
        f"{command} {run.outcome} {age_text((now - run.started_at).total_seconds())} ago"
        for command, run in sorted(ran.last.items())
    ]
    console.print(f"runs: last {'; '.join(newest)} ('safehold list --runs')")
    for reason in ran.reasons:
        console.print(f"[{STYLE[ran.level]}]runs: {reason}[/]")
    for note in ran.notes:
        console.print(f"runs: {note}")


def _show_rehearsal(rehearsal: RehearsalStatus, console: Console) -> None:
    drill = rehearsal.drill
    objective = f"RTO full {rehearsal.objective_s / 60:g} min"
    if drill is not None:
        took = f"in {drill.recovery_s:.1f}s" if drill.outcome == "ok" else "FAILED"
        when = drill.started_at.strftime("%Y-%m-%d %H:%M")
        console.print(
            f"full system: last rehearsal {when} (set {drill.set_id}) recovered {took} "
            f"against the {objective}; [{STYLE[rehearsal.level]}]{rehearsal.level}[/]"
        )
    for reason in rehearsal.reasons:
        console.print(f"[{STYLE[rehearsal.level]}]full system: {reason}[/]")
    for note in rehearsal.notes:
        console.print(f"full system: {note} ({objective})")
