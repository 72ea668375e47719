from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from ..config import RetentionSettings
from ..operations.copy import Location
from ..operations.pitr.prune import PitrPrune, wal_summary
from ..operations.prune import PruneResult, prune, prune_location
from ..retention import Policy
from ..sinks.log import human_bytes
from ..storage import LocalStorage
from .flags import shared_options
from .locations import locations
from .runtime import Runtime, runtime


def prune_remote(
    rt: Runtime, location: Location, policy: Policy, now: datetime, dry_run: bool
) -> PruneResult:
    from ..storage.s3 import S3Storage
    from ..storage.s3_lock import S3Lock

    storage = location.storage
    assert isinstance(storage, S3Storage)
    storage.ensure()
    with S3Lock(storage, purpose="safehold prune").hold(timeout=rt.settings.lock_timeout):
        result = prune_location(storage, policy, now, dry_run=dry_run, sink=rt.sink)
        if not dry_run:
            for upload in storage.abort_stale_uploads():
                rt.sink_info(f"{location.name}: aborted the unfinished upload {upload}")
    return result


def policy_of(settings: RetentionSettings) -> Policy:
    return Policy(
        daily=settings.daily,
        weekly=settings.weekly,
        monthly=settings.monthly,
        yearly=settings.yearly,
        keep_last=settings.keep_last,
        safety_days=settings.safety_days,
    )


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="show what would be kept and removed, and why")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def prune_cmd(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove the backups the retention policy no longer keeps (grandfather-father-son).

    Per database and volume, the newest good backup of each of the last retention.daily days,
    retention.weekly ISO weeks, retention.monthly months and retention.yearly years that have
    backups (UTC) is kept, and the retention.keep_last newest. Never removed: the newest good
    backup, pinned backups (safehold pin), members of a kept set, the last verified backup, and
    files without a manifest. --dry-run changes nothing and shows every decision and its reasons.

    PITR base backups are one more target under the same policy (the newest is always kept);
    archived WAL is kept from the start of the oldest kept base backup on, .history files always.
    """
    with runtime(ctx, as_json=as_json) as rt:
        policy = policy_of(rt.settings.retention)
        now = datetime.now(UTC)
        results = [
            prune(
                LocalStorage(rt.settings.backup_dir),
                policy,
                now=now,
                dry_run=dry_run,
                sink=rt.sink,
                lock_timeout=rt.settings.lock_timeout,
                primary=rt.settings.seed_database(),
            )
        ]
        # Every other location by the same policy, under its bucket lock.
        for location in locations(rt.settings):
            results.append(prune_remote(rt, location, policy, now, dry_run))
        if as_json:
            rt.emit_json([result.to_json() for result in results])
            return
        for result in results:
            if result.decisions or result.cleaned or result.pitr is None:
                _table(result, rt.out)
            if result.pitr is not None:
                _pitr_table(result.pitr, rt.out)


def _table(result: PruneResult, console: Console) -> None:
    title = f"{'prune plan (dry run)' if result.dry_run else 'pruned'}: {result.location}"
    if not result.decisions:
        console.print(f"no backups in {result.location}")
    else:
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for column in ("NAME", "TARGET", "CREATED (UTC)", "DECISION", "REASONS"):
            table.add_column(column, no_wrap=column not in ("NAME", "REASONS"))
        ordered = sorted(result.decisions, key=lambda d: (d.candidate.created, d.candidate.name))
        for decision in reversed(ordered):
            c = decision.candidate
            verdict = "[green]keep[/]" if decision.keep else "[red]remove[/]"
            table.add_row(
                c.name,
                c.target or "?",
                f"{c.created.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                verdict,
                ", ".join(decision.reasons),
                style=None if decision.keep else "dim",
            )
        console.print(table)
    verb = "would remove" if result.dry_run else "removed"
    lines = [
        f"kept {result.kept}, {verb} {len(result.removed)} backups "
        f"({human_bytes(result.freed_bytes)})"
    ]
    if result.cleaned:
        lines.append(f"{verb} {len(result.cleaned)} orphaned records: {', '.join(result.cleaned)}")
    if result.sets_removed:
        lines.append(f"{verb} set records: {', '.join(result.sets_removed)}")
    if result.links_removed:
        lines.append(f"{verb} latest links: {', '.join(result.links_removed)}")
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _pitr_table(pitr: PitrPrune, console: Console) -> None:
    verb = "would remove" if pitr.dry_run else "removed"
    if pitr.plan.bases:
        title = f"base backups (PITR){' (dry run)' if pitr.dry_run else ''}"
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for column in ("NAME", "STARTED (UTC)", "SIZE", "WAL FROM", "DECISION", "REASONS"):
            table.add_column(column, no_wrap=column != "REASONS")
        for decision in reversed(pitr.plan.bases):
            base = pitr.bases[decision.candidate.name]
            size = pitr.sizes.get(base.name)
            table.add_row(
                base.name,
                f"{base.started.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                human_bytes(size) if size is not None else "missing",
                base.start_segment,
                "[green]keep[/]" if decision.keep else "[red]remove[/]",
                ", ".join(decision.reasons),
                style=None if decision.keep else "dim",
            )
        console.print(table)
    lines = [
        f"base backups: kept {len(pitr.plan.bases) - len(pitr.plan.bases_removed)}, {verb} "
        f"{len(pitr.plan.bases_removed)} ({human_bytes(pitr.freed_bytes)})",
        f"WAL: {wal_summary(pitr)}",
    ]
    if pitr.cleaned:
        lines.append(f"{verb} {len(pitr.cleaned)} leftovers of an interrupted prune: "
                     + ", ".join(pitr.cleaned))  # fmt: skip
    for line in lines:
        console.print(line, markup=False, highlight=False)
