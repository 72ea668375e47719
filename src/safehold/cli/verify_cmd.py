from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

import click
from rich.console import Console
from rich.table import Table

from .. import catalog
from ..errors import IntegrityError
from ..model import BackupRecord
from ..operations.checks.verify import (
    LEVELS,
    Level,
    VerifyResult,
    verify_all,
    verify_backup,
    verify_newest,
)
from ..sinks.log import human_bytes
from ..storage import LocalStorage
from .aliases import deprecated_flag
from .flags import shared_options
from .locations import mirrored, read_source
from .output import ReportedFailure
from .requests import VerifyRequest
from .runtime import runtime

OUTCOME_STYLE = {"ok": "green", "unverifiable": "yellow", "failed": "red"}


@click.command()
@click.argument("name", required=False, metavar="[NAME|latest]")
@click.option(
    "--all-backups", "every", is_flag=True, help="every backup in the repository, files "
    "without a manifest and manifests without a file included, oldest first",
)  # fmt: skip
@deprecated_flag("--all", "every", "--all-backups")  # --all is the whole system elsewhere
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default="quick",
    show_default=True,
    help="quick: size and sha256 against the manifest; full: also decompress and read it all "
    "(pg_restore reads a dump's every block and its table list must match the manifest; an "
    "archive's every file is read and counted)",
)
@click.option(
    "--from",
    "source",
    metavar="LOCATION",
    help="verify the copies in this location ([locations.NAME]) instead of the local ones",
)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@shared_options
@click.pass_context
def verify(
    ctx: click.Context,
    name: str | None,
    every: bool,
    level: str,
    source: str | None,
    as_json: bool,
) -> None:
    """Check that backups are intact, without restoring them.

    With no NAME (or NAME 'latest'): the newest backup of each database and volume, whatever
    its state, so a damaged newest backup is reported rather than skipped. NAME is a backup as
    'safehold list' shows it, or a 'latest' link name. Each result is recorded in the repository
    (.safehold/verify/NAME.json). Exit code 0 when every backup verified, 6 when any failed or
    has no manifest (unverified/foreign: there is no checksum to check it against).

    --from LOCATION reads the chosen backups from that location into a scratch folder and
    verifies those bytes (results are shown, not recorded).
    """
    asked = VerifyRequest(name, every, cast(Level, level))
    asked.check()
    with runtime(ctx, as_json=as_json) as rt, contextlib.ExitStack() as stack:
        storage = LocalStorage(rt.settings.backup_dir)
        source = read_source(rt, storage, source)
        if source is not None:
            storage = stack.enter_context(mirrored(rt, source, _picker(name, every)))
        options: dict[str, Any] = {
            "lock_timeout": rt.settings.lock_timeout,
            "pg_bin_dir": rt.settings.database.pg_bin_dir,
            # Only a full check decrypts; a quick one checks the ciphertext's sha256, no key.
            "key": rt.settings.decryption_key() if asked.level == "full" else None,
        }
        depth = asked.level
        if every:
            results = verify_all(storage, depth, rt.sink, **options)
        elif asked.newest or name is None:
            results = verify_newest(storage, depth, rt.sink, **options)
        else:
            results = [verify_backup(storage, name, depth, rt.sink, **options)]
        if as_json:
            rt.emit_json([result.to_json() for result in results])
        else:
            _table(results, rt.out, storage.description)
        bad = [result for result in results if not result.ok]
        if bad and as_json:
            raise ReportedFailure(_failure(bad, len(results)))
        if bad:
            raise _failure(bad, len(results))


def _failure(bad: list[VerifyResult], total: int) -> IntegrityError:
    if len(bad) == 1 and total == 1:
        return IntegrityError(bad[0].error or "verification failed", hint=bad[0].hint)
    names = ", ".join(f"{r.artifact} ({r.outcome})" for r in bad)
    return IntegrityError(
        f"{len(bad)} of {total} backups did not verify: {names}",
        hint="the messages above say what is wrong with each; restore from a backup that "
        "verified ('safehold list' shows them)",
    )


def _picker(name: str | None, every: bool) -> Callable[[list[BackupRecord]], list[str]]:
    """Which artifacts of a location a --from verify reads."""

    def pick(records: list[BackupRecord]) -> list[str]:
        if every:
            return [r.name for r in records]
        if name not in (None, "latest"):
            return [str(name)]
        # Like verify_newest: the newest of each target whatever its state.
        return [r.name for r in catalog.newest_by_target(records, good_only=False).values()]

    return pick


def _table(results: list[VerifyResult], console: Console, where: str) -> None:
    table = Table(title=f"verified in {where}", title_justify="left", box=None, pad_edge=False)
    for column in ("NAME", "KIND", "TARGET", "LEVEL", "RESULT", "READ", "TIME"):
        table.add_column(column, no_wrap=column != "NAME")
    for result in results:
        style = OUTCOME_STYLE[result.outcome]
        table.add_row(
            result.artifact,
            result.kind,
            result.target or "?",
            result.level,
            f"[{style}]{result.outcome}[/]",
            human_bytes(result.bytes_read),
            f"{result.duration_s:.1f}s",
        )
    console.print(table)
    for result in results:
        if not result.ok:
            console.print(f"{result.outcome}: {result.error}", markup=False, highlight=False)
            if result.hint:
                console.print(f"  hint: {result.hint}", markup=False, highlight=False)
