"""The schedule in a crontab. Each of our lines ends with a marker comment (``# safehold:<job>``):
install replaces exactly the marked lines (in place, new jobs after them), remove drops exactly
them, and every other line stays byte for byte.

One exception, only when asked (``install --replace-seed``): a line of the crontab's own that
runs a backup (the seed's ``scripts/backup.sh`` line, a hand-written ``safehold backup``) is
commented out with the ``#safehold-off:`` prefix, so the database is not backed up twice a night;
remove takes the prefix away again.

python-crontab reads and writes the crontab (``crontab -l`` / ``crontab FILE``, ``-u USER``, or a
plain crontab file) and parses lines; the editing is done on the text, because python-crontab
re-renders a whole crontab when it writes one (it moves comments and environment lines, drops
quotes and lines it cannot parse), which would touch lines that are not ours.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crontab import CronItem, CronTab

from ..errors import ToolError, UsageError
from .invocation import Invocation
from .jobs import Job

MARKER = re.compile(r"^safehold:([a-z_]+)$")
# Before a line of the crontab's own that install switched off: remove switches it back on.
OFF = "#safehold-off: "


class _VerbatimTab(CronTab):  # type: ignore[misc]  # python-crontab ships no types
    """A CronTab that keeps the lines it read as text and writes the text it is given."""

    def __init__(self, **where: Any) -> None:
        object.__setattr__(self, "raw", [])
        object.__setattr__(self, "text", "")
        super().__init__(**where)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "lines" and value:  # read() hands over the lines exactly as read
            raw = [(v.decode() if isinstance(v, bytes) else str(v)).rstrip("\r\n") for v in value]
            object.__setattr__(self, "raw", raw)
        super().__setattr__(name, value)

    def render(self, errors: bool = False) -> str:
        return str(self.text)


@dataclass(frozen=True)
class CrontabRef:
    """A user's crontab (``None``: the current user's) or a crontab file in user format."""

    user: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        if self.file is not None:
            return f"crontab file {self.file}"
        return f"crontab of {self.user}" if self.user else "crontab of the current user"

    def read(self) -> list[str]:
        """The lines; none for a crontab (file) that does not exist yet."""
        return self._load()[1]

    def _load(self) -> tuple[_VerbatimTab | None, list[str]]:
        if self.file is not None and not self.file.exists():
            return None, []
        try:
            if self.file is not None:
                tab = _VerbatimTab(tabfile=str(self.file))
            else:
                tab = _VerbatimTab(user=self.user or True)
        except OSError as exc:
            raise ToolError(
                f"cannot read the {self.describe()}: {exc}", hint=_NO_CRON_HINT
            ) from None
        lines: list[str] = list(tab.raw)
        if self.file is None and lines and lines[-1] == "":
            lines.pop()  # 'crontab -l' output split on newlines: not a line of the crontab
        return tab, lines

    def _write(self, tab: _VerbatimTab | None, lines: list[str]) -> None:
        if tab is None:  # a crontab file that did not exist
            assert self.file is not None
            self.file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            tab = _VerbatimTab(tabfile=str(self.file))
        object.__setattr__(tab, "text", "".join(line + "\n" for line in lines))
        try:
            tab.write()
        except OSError as exc:
            raise ToolError(
                f"cannot write the {self.describe()}: {exc}", hint=_NO_CRON_HINT
            ) from None


_NO_CRON_HINT = (
    "install cron (Debian/Ubuntu: apt-get install cron); in a container without cron run "
    "'safehold daemon' instead; --crontab-file FILE writes a crontab file to install by hand"
)


def _parse(line: str) -> Any:
    """A line as python-crontab reads it (a CronItem); ``None`` when it cannot."""
    try:
        return CronItem.from_line(line, cron=CronTab(tab=""))
    except (ValueError, KeyError, IndexError):
        return None


@dataclass(frozen=True)
class Installed:
    job: str
    line: str
    expression: str
    enabled: bool


def ours(lines: list[str]) -> list[Installed]:
    """Our lines: valid cron lines (commented out ones too) whose comment is our marker."""
    found: list[Installed] = []
    for line in lines:
        if not line.strip():
            continue
        item = _parse(line)
        match = (
            MARKER.match(str(item.comment or "")) if item is not None and item.is_valid() else None
        )
        if match:
            found.append(Installed(match.group(1), line, str(item.slices), bool(item.is_enabled())))
    return found


def other_backups(lines: list[str]) -> list[str]:
    """Active lines that are not ours but run a backup: the seed's ``scripts/backup.sh`` line
    (``0 2 * * * /opt/app/scripts/backup.sh >> /var/log/backup.log 2>&1``) or ``safehold
    backup`` written by hand."""
    found = []
    for line in lines:
        item = _parse(line) if line.strip() else None
        if item is None or not item.is_valid() or not item.is_enabled():
            continue
        if MARKER.match(str(item.comment or "")) is None and _runs_backup(str(item.command)):
            found.append(line)
    return found


def _runs_backup(command: str) -> bool:
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote: cron's sh would fail on it too, but look anyway
        words = command.split()
    names = [os.path.basename(word) for word in words]
    return "backup.sh" in names or any(
        name == "safehold" and "backup" in names[at + 1 :] for at, name in enumerate(names)
    )


def cron_line(job: Job, how: Invocation) -> str:
    """``0 2 * * * cd DIR && [export K=V &&] { safehold backup ... -q && ...; } >/dev/null
    # safehold:database``: safehold writes the log file itself (all lines, timestamped);
    warnings and errors also reach stderr, which cron mails; stdout (file names) is dropped."""
    q = shlex.quote
    steps = [" ".join(q(arg) for arg in [*how.argv(step), "-q"]) for step in job.steps]
    run = steps[0] if len(steps) == 1 else "{ " + " && ".join(steps) + "; }"
    exports = " ".join(f"{name}={q(value)}" for name, value in how.env)
    command = f"cd {q(str(how.workdir))} && " + (f"export {exports} && " if exports else "")
    command += f"{run} >/dev/null"
    if "\n" in command or "\r" in command or re.search(r"\s#", command):
        raise UsageError(
            f"the {job.name} job's command cannot be a crontab line: {command!r}",
            hint="a path or setting holds a newline or ' #' (a crontab comment): move it",
        )
    line = f"{job.expression} {command.replace('%', chr(92) + '%')} # {job.marker}"
    item = _parse(line)
    assert item is not None and item.is_valid() and item.comment == job.marker, line
    return line


@dataclass(frozen=True)
class Change:
    before: list[str]  # the whole crontab, as read
    after: list[str]  # the whole crontab, as it is (or would be) written
    removed: list[str]  # our lines taken out
    added: list[str]  # our lines put in
    others: list[str]  # active lines of the crontab's own that run a backup (other_backups)
    switched: list[str]  # lines of its own switched off (install) or back on (remove)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def install(
    ref: CrontabRef, new: list[str], *, dry_run: bool = False, replace_others: bool = False
) -> Change:
    """Replace our lines by ``new``: where the first of them was, else at the end; with
    ``replace_others``, switch off the crontab's own backup lines (``OFF``)."""

    def edit(before: list[str], mine: set[str]) -> tuple[list[str], list[str]]:
        off = set(other_backups(before)) if replace_others else set()
        kept = [OFF + line if line in off else line for line in before if line not in mine]
        at = next((i for i, line in enumerate(before) if line in mine), len(kept))
        return [*kept[:at], *new, *kept[at:]], [line for line in before if line in off]

    return _edit(ref, edit, new, dry_run)


def remove(ref: CrontabRef, *, dry_run: bool = False) -> Change:
    """Take our lines out, and switch back on the lines install switched off."""

    def edit(before: list[str], mine: set[str]) -> tuple[list[str], list[str]]:
        after = [ln.removeprefix(OFF) for ln in before if ln not in mine]
        return after, [ln.removeprefix(OFF) for ln in before if ln.startswith(OFF)]

    return _edit(ref, edit, [], dry_run)


def _edit(
    ref: CrontabRef,
    edit: Callable[[list[str], set[str]], tuple[list[str], list[str]]],
    new: list[str],
    dry_run: bool,
) -> Change:
    # One read, one write: python-crontab's own read and write, our text in between.
    tab, before = ref._load()
    mine = {entry.line for entry in ours(before)}
    after, switched = edit(before, mine)
    removed = [ln for ln in before if ln in mine]
    change = Change(before, after, removed, new, other_backups(before), switched)
    if change.changed and not dry_run:
        ref._write(tab, change.after)
    return change
