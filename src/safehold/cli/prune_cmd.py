from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from ..config import RetentionSettings
from ..operations.prune import PruneResult, prune
from ..retention import Policy
from ..sinks.log import human_bytes
from ..storage import LocalStorage
from .runtime import runtime, shared_options


def policy_of(settings: RetentionSettings) -> Policy:
    return Policy(
        daily=settings.daily,
        weekly=settings.weekly,
        monthly=settings.monthly,
        yearly=settings.yearly,
        keep_last=settings.keep_last,
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
    """
    with runtime(ctx, as_json=as_json) as rt:
        policy = policy_of(rt.settings.retention)
        locations = [LocalStorage(rt.settings.backup_dir)]  # S3 locations join this list
        now = datetime.now(UTC)
        results = [
            prune(
                storage,
                policy,
                now=now,
                dry_run=dry_run,
                sink=rt.sink,
                lock_timeout=rt.settings.lock_timeout,
            )
            for storage in locations
        ]
        if as_json:
            rt.emit_json([result.to_json() for result in results])
            return
        for result in results:
            _table(result, rt.out)


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
