"""What the smaller commands were asked, and the combinations of flags they refuse.

Every command body is parse -> ``check()`` -> call -> print: a request object holds one run's
flags, typed, and its ``check`` refuses what does not go together before the runtime starts,
anything is read or a lock is taken. The larger commands keep theirs beside them
(``BackupRequest`` in ``backup_cmd``, ``RestoreRequest`` in ``restore_request``, ``AllRequest``
in ``restore_all``, ``DrillRequest`` in ``drill_cmd``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..operations.checks.verify import Level
    from ..retention import Period


@dataclass(frozen=True)
class CopyRequest:
    names: tuple[str, ...]
    latest: bool
    representative: Period | None

    def check(self) -> None:
        if sum(bool(x) for x in (self.names, self.latest, self.representative)) > 1:
            raise UsageError("give BACKUP names, --latest or --representative, not two of them")


@dataclass(frozen=True)
class VerifyRequest:
    name: str | None
    every: bool
    level: Level

    def check(self) -> None:
        if self.name and self.every:
            raise UsageError("give a backup NAME or --all-backups, not both")

    @property
    def newest(self) -> bool:
        """No name (or 'latest'): the newest backup of each target."""
        return not self.every and self.name in (None, "latest")


@dataclass(frozen=True)
class PinRequest:
    name: str | None
    note: str
    keep_until: str | None

    def check(self) -> None:
        if self.keep_until and self.name is None:
            raise UsageError("--keep-until pins a backup: give its NAME")
        self.until()

    def until(self) -> datetime | None:
        return parse_keep_until(self.keep_until) if self.keep_until else None


@dataclass(frozen=True)
class ReportRequest:
    html_path: Path | None
    days: int
    as_json: bool

    def check(self) -> None:
        if self.html_path is None and not self.as_json:
            raise UsageError(
                "nothing to do: give --html FILE (the page) and/or --json (the data)",
                hint="safehold report --html report.html",
            )


@dataclass(frozen=True)
class ListRequest:
    only_sets: bool
    only_runs: bool
    source: str | None

    def check(self) -> None:
        if self.only_runs and (self.only_sets or self.source):
            raise UsageError("--runs lists the local repository's runs: no --sets or --from")


@dataclass(frozen=True)
class CatRequest:
    name: str
    volume: str | None
    force_tty: bool

    def check(self, out_fd: int) -> None:
        if not self.force_tty and os.isatty(out_fd):
            raise UsageError(
                "refusing to write a backup's binary content to a terminal",
                hint="pipe it (safehold cat latest | pg_restore --list), redirect it (> FILE), "
                "or add --force-tty",
            )


def parse_keep_until(text: str) -> datetime:
    """--keep-until DATE: a day means through its end (UTC); a time without a zone is UTC."""
    try:
        if len(text) == 10:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(
            f"--keep-until {text!r} is not a date", hint="YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if moment <= datetime.now(UTC):
        raise UsageError(f"--keep-until {text} is not in the future")
    return moment
