"""Timestamped log lines for cron and log files; JSON lines for log shippers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
