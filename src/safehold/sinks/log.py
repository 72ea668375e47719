"""Timestamped log lines for cron and log files; JSON lines for log shippers.

A log file can hold what a backup touched, so it is kept private whatever the umask: folders
made for it are 0700, the file is made 0600. It is opened without following a symlink
(``O_NOFOLLOW``: one planted at its name would point the appends at another file), and must be
a regular file of this user; the folder it is in must belong to this user or root and, unless
sticky, be writable by no one else, or someone else could swap the file under us.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..errors import ConfigError
from ..model import Event, EventSink

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Without a terminal, progress is logged this often at most, so cron logs stay readable.
PROGRESS_LOG_EVERY_S = 30.0


class LogSink:
    def __init__(
        self,
        stream: TextIO | None = None,
        log_file: Path | None = None,
        *,
        fmt: str = "text",
        level: str = "info",
        progress_lines: bool = True,
    ) -> None:
        self._stream = stream
        self._file: TextIO | None = None
        if log_file is not None:
            fd = open_log_file(Path(log_file))
            self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._fmt = fmt
        self._level = LEVELS[level]
        self._progress_lines = progress_lines
        self._last_progress: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            if not self._progress_lines or self._level > LEVELS["info"] or not self._due(event):
                return
            event = Event("progress", _progress_text(event), "info", event.data, event.at)
        elif LEVELS[event.level] < self._level:
            return
        line = self._format(event)
        for out in (self._stream, self._file):
            if out is not None:
                out.write(line + "\n")
                out.flush()

    def _due(self, event: Event) -> bool:
        task = str(event.data.get("task"))
        now = time.monotonic()
        if task not in self._last_progress:
            self._last_progress[task] = now  # the start is logged by the operation itself
            return bool(event.data.get("final"))
        if event.data.get("final") or now - self._last_progress[task] >= PROGRESS_LOG_EVERY_S:
            self._last_progress[task] = now
            return True
        return False

    def _format(self, event: Event) -> str:
        stamp = event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self._fmt == "json":
            return json.dumps(
                {
                    "time": stamp,
                    "level": event.level,
                    "event": event.kind,
                    "message": event.message,
                    **_plain(event.data),
                }
            )
        return f"{stamp} {event.level.upper():7} {event.kind}: {event.message}"

    def same_file_as(self, stream: TextIO) -> bool:
        """Whether this sink's log file is the file ``stream`` writes to (cron's ``>> f 2>&1``
        with log_file f): then one of the two must stay silent, or every line is there twice."""
        if self._file is None:
            return False
        try:
            mine, theirs = os.fstat(self._file.fileno()), os.fstat(stream.fileno())
        except (OSError, ValueError):  # a stream without a file (a test's StringIO), or closed
            return False
        return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def open_log_file(path: Path) -> int:
    """An fd appending to ``path``, made (and its missing folders) private; ConfigError for a
    symlink, a file of someone else, or a folder others could change."""
    _private_folder(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)  # the umask may have taken bits away; none were to be added
            return fd
        except FileExistsError:
            fd = os.open(path, flags)
    except OSError as exc:
        why = "is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise _unsafe(path, why) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise _unsafe(path, "is not a regular file of this user")
    return fd


def _private_folder(folder: Path) -> None:
    missing: list[Path] = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        st = os.stat(folder)  # a folder given through a symlink is the folder it names
    except OSError as exc:
        raise _unsafe(folder, exc.strerror or str(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(folder, "is not a folder")
    if st.st_uid not in (0, os.geteuid()):
        raise _unsafe(folder, f"belongs to uid {st.st_uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _unsafe(folder, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
    for made in reversed(missing):
        try:
            os.mkdir(made, 0o700)
            os.chmod(made, 0o700, follow_symlinks=False)  # whatever the umask
        except FileExistsError:
            _private_folder(made)  # made meanwhile by someone else: check it like any other
        except OSError as exc:
            raise _unsafe(made, exc.strerror or str(exc)) from exc


def _unsafe(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"cannot use the log file: {path} {why}",
        hint="point log_file at a file in a folder that only this user (or root) can change",
    )


def _plain(data: dict[str, object]) -> dict[str, object]:
    return {
        k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in data.items()
    }


def _progress_text(event: Event) -> str:
    done, total, unit = event.data.get("done", 0), event.data.get("total"), event.data.get("unit")
    amount = human_bytes(int(done)) if unit == "B" else f"{done} {unit}"
    if total:
        of = human_bytes(int(total)) if unit == "B" else str(total)
        amount += f" of ~{of}"
    return f"{event.message}: {amount}"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def fan_out(*sinks: EventSink | None) -> Callable[[Event], None]:
    live = [s for s in sinks if s is not None]

    def sink(event: Event) -> None:
        for target in live:
            target(event)

    return sink
