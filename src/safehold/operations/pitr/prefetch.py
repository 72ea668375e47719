"""Read-ahead of archived WAL while a restored server replays it.

PostgreSQL asks its ``restore_command`` for one file at a time and waits: a new safehold
process per segment costs its start-up on every one of them. During ``restore --pitr`` the
chain is known in advance (from the base backup's start segment along the timeline switches),
so this thread fetches the next segments (verified, decrypted, decompressed) into a spool
folder inside the data directory, a few ahead of replay, and the restore_command becomes a
shell ``if`` (``restore_command()``): a segment ready in the spool is moved to ``.served/`` and
copied to the server (the server asks for the last one again when it ends recovery; a copy,
not a link, because the server recycles WAL files by overwriting them); a name known to be
absent (``.absent/``: the first segment past the end of the archive, timeline history files
that do not exist) ends the request with exit 1 at once; anything else runs ``wal-fetch``.

A file appears in the spool only complete (staged, chowned, then renamed), so the shell either
takes a whole verified segment or falls back to ``wal-fetch``, which also reports a missing or
damaged file exactly as without the read-ahead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..._proc import shell_word
from . import archive as wal
from .chain import Switch

SPOOL = "safehold_wal_spool"
AHEAD = 8  # segments kept ready: 128 MiB of disk at the default segment size


SERVED_KEEP = 4  # segments kept after they were served, for the server's second request


def restore_command(spool: Path, fetch: str) -> str:
    """The restore_command that takes a segment from the spool, else runs ``fetch``."""
    s = shell_word(str(spool))
    return (
        f"if test -f {s}/%f; then mv {s}/%f {s}/.served/%f && cp {s}/.served/%f %p; "
        f"elif test -f {s}/.served/%f; then cp {s}/.served/%f %p; "
        f"elif test -f {s}/.absent/%f; then exit 1; "
        f"else {fetch} %f %p; fi"
    )


def chain(start: str, switches: list[Switch]) -> Iterator[str]:
    """Segment names from ``start`` on, moving to the child timeline at each switch."""
    steps = [s for s in switches if s.segment[8:] >= start[8:]]
    current = start
    while True:
        while steps and current[8:] == steps[0].segment[8:]:
            current = steps.pop(0).segment
        yield current
        current = wal.next_segment(current)


class Prefetch:
    """``with Prefetch(...)``: the spool exists and fills in the background; on exit the
    thread stops and the spool is removed."""

    def __init__(
        self,
        archive: wal.WalArchive,
        start: str,
        switches: list[Switch],
        spool: Path,
        run_as: str | None,
        ahead: int = AHEAD,
    ) -> None:
        newest = switches[-1].child if switches else int(start[:8], 16)
        # History files that cannot exist: timeline 1's, and the next timeline's, which the
        # server probes for before it picks that number for itself
        self._absent = [f"{1:08X}.history", f"{newest + 1:08X}.history"]
        self._archive = archive
        self._names = chain(start, switches)
        self.spool = spool
        self._owner = pwd.getpwnam(run_as) if run_as else None
        self._ahead = ahead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="safehold-wal-prefetch")
        self.fetched = 0
        self.left = 0  # fetched but never asked for (recovery stopped before them)
        self.ended: str = ""  # why it stopped early: the archive's end, or a damaged file

    def __enter__(self) -> Prefetch:
        for folder in (self.spool, self.spool / ".staging", *self._shared()):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._chown(folder)
        for name in self._absent:
            self._mark_absent(name)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.left = self._ready()
        shutil.rmtree(self.spool, ignore_errors=True)

    def _shared(self) -> list[Path]:
        return [self.spool / ".served", self.spool / ".absent"]

    def _mark_absent(self, name: str) -> None:
        (self.spool / ".absent" / name).touch()

    def _ready(self) -> int:
        try:
            return sum(1 for n in os.listdir(self.spool) if wal.SEGMENT_RE.match(n))
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        for name in self._names:
            while self._ready() >= self._ahead:
                if self._stop.wait(0.02):
                    return
                self._trim_served()
            if self._stop.is_set():
                return
            staged = self.spool / ".staging" / name
            try:
                wal.fetch(self._archive, name, staged, durable=False)
            except wal.WalMissing:
                self.ended = f"the archive ends before {name}"
                self._mark_absent(name)
                return
            except Exception as exc:
                self.ended = f"{name}: {exc}"
                return
            self._chown(staged)  # before it is visible: the server user moves it away
            os.rename(staged, self.spool / name)
            self.fetched += 1

    def _trim_served(self) -> None:
        served = self.spool / ".served"
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(served))[:-SERVED_KEEP]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(served / name)

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
