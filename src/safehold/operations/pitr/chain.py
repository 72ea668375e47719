"""The WAL chain a recovery replays: timelines (``N.history`` files) and continuity.

A recovery started from a base backup on timeline T replays T's segments, and at each timeline
switch (a promotion after an earlier recovery) moves to the child timeline, up to the newest
timeline in the archive (PostgreSQL's ``recovery_target_timeline = 'latest'``). The history
file of timeline N lists its ancestors and the LSN where each one was left. At a switch point
the child's segment holds everything up to it (the parent's last segment is archived only as
``.partial``), so the chain takes the parent's segments *before* the switch segment and the
child's from it on.

A base backup is on that path when it is on the newest timeline, or on an ancestor and ended
before the switch away from it: a base backup taken on a timeline *after* another server
branched away from it cannot be followed onto the newer timeline.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ...storage import LocalStorage, Storage
from .archive import (
    SEGMENT_RE,
    WalArchive,
    archived,
    fetch,
    lsn_value,
    next_segment,
    segment_of,
    sum_key,
)


@dataclass(frozen=True)
class Switch:
    parent: int  # the timeline left
    lsn: str  # where it was left
    child: int  # the timeline continued on

    @property
    def segment(self) -> str:
        """The first segment read from the child (named on the child's timeline)."""
        return f"{self.child:08X}" + segment_of(self.lsn, self.child)[8:]


@dataclass(frozen=True)
class Gap:
    first: str
    last: str
    count: int
    after: datetime | None  # when the last segment before the gap was archived
    before: datetime | None  # when the first segment after it was archived

    def describe(self) -> str:
        span = self.first if self.count == 1 else f"{self.first} .. {self.last} ({self.count})"
        if self.after is None:
            return f"missing {span}"
        until = f" to {self.before:%Y-%m-%d %H:%M:%S} UTC" if self.before else ""
        return (
            f"missing {span}: changes from {self.after:%Y-%m-%d %H:%M:%S} UTC{until} cannot be "
            f"replayed; recovery from this base backup stops at about {self.after:%H:%M:%S}"
        )


@dataclass(frozen=True)
class ChainReport:
    start: str
    newest: str | None
    segments: int  # present on the path
    missing: tuple[str, ...]
    timelines: tuple[int, ...] = ()
    gaps: tuple[Gap, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.newest is not None and not self.missing


def history_names(storage: Storage) -> list[str]:
    return [n for n in archived(storage) if n.endswith(".history")]


def newest_timeline(storage: Storage, at_least: int = 1) -> int:
    found = [int(n[:8], 16) for n in history_names(storage)]
    return max([at_least, *found])


def parse_history(text: str, timeline: int) -> list[Switch]:
    """A history file's lines ("1	0/3000158	reason") as the switches leading to ``timeline``."""
    rows: list[tuple[int, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or line.lstrip().startswith("#") or len(fields) < 2:
            continue
        rows.append((int(fields[0]), fields[1]))
    children = [parent for parent, _ in rows[1:]] + [timeline]
    return [Switch(parent, lsn, child) for (parent, lsn), child in zip(rows, children, strict=True)]


def read_history(archive: WalArchive, timeline: int) -> list[Switch]:
    """The switches that lead to ``timeline``, read (and decrypted) from the archive."""
    if timeline <= 1:
        return []
    with tempfile.TemporaryDirectory(prefix="safehold-history-") as folder:
        dest = Path(folder) / f"{timeline:08X}.history"
        fetch(archive, dest.name, dest)
        return parse_history(dest.read_text(errors="replace"), timeline)


def path_from(switches: list[Switch], timeline: int) -> list[Switch] | None:
    """The switches a recovery starting on ``timeline`` follows to the newest one; None when
    that timeline is not an ancestor of it."""
    for number, switch in enumerate(switches):
        if switch.parent == timeline:
            return switches[number:]
    return [] if not switches or switches[-1].child == timeline else None


def on_path(switches: list[Switch], timeline: int, stop_lsn: str) -> bool:
    """Can a base backup on ``timeline`` that ended at ``stop_lsn`` reach the newest timeline?"""
    path = path_from(switches, timeline)
    if path is None:
        return False
    return not path or lsn_value(stop_lsn) <= lsn_value(path[0].lsn)


def check_chain(
    archive: WalArchive, start: str, switches: list[Switch] | None = None, *, limit: int = 1000
) -> ChainReport:
    """Every segment from ``start`` along the timeline path to the newest archived segment."""
    storage = archive.primary
    if switches is None:
        switches = read_history(archive, newest_timeline(storage, int(start[:8], 16)))
    path = path_from(switches, int(start[:8], 16)) or []
    present = {n for n in archived(storage) if SEGMENT_RE.match(n)}
    final = path[-1].child if path else int(start[:8], 16)
    on_final = sorted(n for n in present if int(n[:8], 16) == final)
    timelines = (int(start[:8], 16), *(s.child for s in path))
    if not on_final or on_final[-1][8:] < start[8:]:
        return ChainReport(start, None, 0, (start,), timelines)
    newest = on_final[-1]
    missing: list[str] = []
    current, found, steps = start, 0, list(path)
    while current[8:] <= newest[8:]:
        if steps and current[8:] == steps[0].segment[8:]:
            current = steps.pop(0).segment  # the child's copy of the switch segment
            continue
        if current in present:
            found += 1
        elif len(missing) < limit:
            missing.append(current)
        current = next_segment(current)
    return ChainReport(start, newest, found, tuple(missing), timelines, _gaps(storage, missing))


def _gaps(storage: Storage, missing: list[str]) -> tuple[Gap, ...]:
    runs: list[list[str]] = []
    for name in missing:
        if runs and next_segment(runs[-1][-1]) == name:
            runs[-1].append(name)
        else:
            runs.append([name])
    return tuple(
        Gap(
            run[0],
            run[-1],
            len(run),
            _archived_at(storage, _previous(run[0])),
            _archived_at(storage, next_segment(run[-1])),
        )
        for run in runs
    )


def _previous(name: str) -> str:
    timeline, log, seg = name[:8], int(name[8:16], 16), int(name[16:], 16)
    if seg == 0:
        log, seg = log - 1, 0xFF
    else:
        seg -= 1
    return f"{timeline}{log:08X}{seg:08X}"


def _archived_at(storage: Storage, name: str) -> datetime | None:
    if not isinstance(storage, LocalStorage):
        return None
    with contextlib.suppress(OSError):
        return datetime.fromtimestamp(os.stat(storage.path(sum_key(name))).st_mtime, UTC)
    return None
