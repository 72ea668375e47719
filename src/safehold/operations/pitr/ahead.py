"""Archiving ahead of the server: one ``wal-push`` also pushes the segments that are already
waiting, so a busy server's archiver does not pay a process start-up per segment.

PostgreSQL runs ``archive_command`` for one file at a time, in order, and a new safehold process
costs about a quarter of a second before any work (a second on a loaded machine): alone, that
caps archiving near 4 segments a second, below what a busy server writes. When ``wal-push`` is
called for a segment it pushes it and, alongside it on ``WORKERS`` threads, the segments the
server has marked ready after it (``pg_wal/archive_status/*.ready``, complete and never changed
again), leaving a marker ``wal/.ahead/<name>`` for each once it is durable in every place. It
looks again whenever a thread frees up, so it keeps up while the server marks more, until
``AHEAD`` segments or ``AHEAD_S`` seconds (the server hears back about its own segment only
when the process ends). The archive_command (``archive_command()``) is a shell ``if``: a marker
is taken (removed) and the command succeeds at once; otherwise ``wal-push`` runs. The same
protocol as pgBackRest's asynchronous archiving.

Markers older than ``STALE_S`` are removed, so a marker left by a server that crashed can never
stand in for a different file of the same name much later (a cluster re-created into the same
repository); the slow path then compares content, as always.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ... import naming
from ..._proc import shell_word
from ...storage import LocalStorage
from . import archive as wal

AHEAD = 64
AHEAD_S = 20.0
WORKERS = 2
STALE_S = 600.0
MARKERS = naming.WAL_MARKERS_DIR


def archive_command(push: str, backup_dir: Path) -> str:
    """``push`` ("<safehold> wal-push ... %p") behind the marker check."""

    markers = shell_word(str(backup_dir.absolute() / MARKERS))
    return f"if rm {markers}/%f 2>/dev/null; then exit 0; else {push}; fi"


def waiting(segment: Path, limit: int = AHEAD) -> list[Path]:
    """Segments after ``segment`` that the server has marked ready, oldest first."""
    status = segment.parent / "archive_status"
    try:
        names = sorted(n[: -len(".ready")] for n in os.listdir(status) if n.endswith(".ready"))
    except OSError:
        return []
    later = [n for n in names if wal.SEGMENT_RE.match(n) and n > segment.name]
    return [segment.parent / n for n in later[:limit]]


def push(
    archive: wal.WalArchive, path: Path, *, limit: int = AHEAD
) -> tuple[wal.PushResult, list[str]]:
    """Push ``path`` (its failure raises) and, on the same threads, up to ``limit`` segments
    waiting after it; returns its result and the names now marked."""
    if limit <= 0 or not _local_segment(archive, path):
        return wal.push(archive, path), []
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="safehold-wal-push") as pool:
        # the server's own segment first: on a thread too, so both cores work from the start
        mine = pool.submit(wal.push, archive, path)
        marked = _ahead(pool, archive, path, limit, mine)
        return mine.result(), marked


def push_ahead(archive: wal.WalArchive, segment: Path, *, limit: int = AHEAD) -> list[str]:
    """Push the segments waiting after ``segment``; returns the names now marked."""
    if not _local_segment(archive, segment):
        return []
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="safehold-wal-ahead") as pool:
        return _ahead(pool, archive, segment, limit, None)


def _local_segment(archive: wal.WalArchive, path: Path) -> bool:
    return isinstance(archive.primary, LocalStorage) and bool(wal.SEGMENT_RE.match(path.name))


def _ahead(
    pool: ThreadPoolExecutor,
    archive: wal.WalArchive,
    segment: Path,
    limit: int,
    mine: Future[wal.PushResult] | None,
) -> list[str]:
    assert isinstance(archive.primary, LocalStorage)
    markers = archive.primary.root / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    _drop_stale(markers)

    def one(path: Path) -> str | None:
        try:
            wal.push(archive, path)
        except FileNotFoundError:
            return None  # archived and recycled meanwhile by the server's own call
        except Exception:
            return None  # no marker: the server's own call pushes it and reports
        (markers / path.name).touch()  # only now: durable in every place
        return path.name

    deadline = time.monotonic() + AHEAD_S
    seen: set[str] = set()
    queued: set[Future[str | None]] = set()
    marked: list[str] = []
    while True:
        failed = mine is not None and mine.done() and mine.exception() is not None
        # a short queue, refilled as threads free up: each refill sees what the server has
        # marked ready meanwhile, and a failure of the server's own segment stops the refills
        room = min(limit - len(seen), WORKERS + 1 - len(queued))
        if room > 0 and not failed and time.monotonic() < deadline:
            for path in waiting(segment, limit):
                if room == 0:
                    break
                if path.name in seen:
                    continue
                seen.add(path.name)
                if not (markers / path.name).exists():  # else an earlier call pushed it
                    queued.add(pool.submit(one, path))
                    room -= 1
        if not queued:
            return sorted(marked)
        done, queued = wait(queued, return_when=FIRST_COMPLETED)
        marked += [name for name in (f.result() for f in done) if name is not None]


def _drop_stale(markers: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(markers):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > STALE_S:
                    os.unlink(entry.path)
