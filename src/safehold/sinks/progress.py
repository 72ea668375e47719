"""Progress bars on a terminal (rich). Events other than progress are left to the log sink."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from ..model import Event


class ProgressSink:
    def __init__(self, console: Console) -> None:
        self._bytes = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._items = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, tuple[Progress, TaskID]] = {}

    def __call__(self, event: Event) -> None:
        if event.kind != "progress":
            return
        name = str(event.data.get("task"))
        total = event.data.get("total")
        done = event.data.get("done", 0)
        if name not in self._tasks:
            bars = self._bytes if event.data.get("unit") == "B" else self._items
            if not bars.live.is_started:
                bars.start()
            self._tasks[name] = (bars, bars.add_task(name, total=total))
        bars, task = self._tasks[name]
        bars.update(task, completed=done)
        if event.data.get("final"):
            bars.remove_task(task)
            del self._tasks[name]
            if not bars.tasks:
                bars.stop()

    def close(self) -> None:
        for bars in (self._bytes, self._items):
            if bars.live.is_started:
                bars.stop()
