"""Archiving ahead of the server: one ``wal-push`` also pushes the segments that are already
waiting, so a busy server's archiver does not pay a process start-up per segment.

PostgreSQL runs ``archive_command`` for one file at a time, in order, and a new safehold process
costs about a quarter of a second before any work: alone, that caps archiving near 4 segments
a second, below what a busy server writes on this machine. When ``wal-push`` is called for a
segment it pushes it, then pushes up to ``AHEAD`` more segments the server has marked ready
(``pg_wal/archive_status/*.ready``, complete and never changed again), two at a time, and leaves
a marker ``wal/.ahead/<name>`` for each once it is durable in every place. The archive_command
(``archive_command()``) is a shell ``if``: a marker is taken (removed) and the command succeeds
at once; otherwise ``wal-push`` runs. The same protocol as pgBackRest's asynchronous archiving.

Markers older than ``STALE_S`` are removed, so a marker left by a server that crashed can never
stand in for a different file of the same name much later (a cluster re-created into the same
repository); the slow path then compares content, as always.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..storage import LocalStorage
from . import wal

AHEAD = 16
WORKERS = 2
STALE_S = 600.0
MARKERS = f"{wal.PREFIX}/.ahead"


def archive_command(push: str, backup_dir: Path) -> str:
    """``push`` ("<safehold> wal-push ... %p") behind the marker check."""
    from .pitr_setup import shell_word

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


def push_ahead(archive: wal.WalArchive, segment: Path, *, limit: int = AHEAD) -> list[str]:
    """Push the segments waiting after ``segment``; returns the names now marked."""
    if not isinstance(archive.primary, LocalStorage) or not wal.SEGMENT_RE.match(segment.name):
        return []
    markers = archive.primary.root / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    _drop_stale(markers)
    todo = [p for p in waiting(segment, limit) if not (markers / p.name).exists()]

    def one(path: Path) -> str | None:
        try:
            wal.push(archive, path)
        except FileNotFoundError:
            return None  # archived and recycled meanwhile by the server's own call
        except Exception:
            return None
        (markers / path.name).touch()
        return path.name

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="safehold-wal-ahead") as pool:
        return [name for name in pool.map(one, todo) if name is not None]


def _drop_stale(markers: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(markers):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > STALE_S:
                    os.unlink(entry.path)
