"""Read-ahead of archived WAL while a restored server replays it.

PostgreSQL asks its ``restore_command`` for one file at a time and waits: a new safehold
process per segment costs its start-up on every one of them. During ``restore --pitr`` the
chain is known in advance (from the base backup's start segment along the timeline switches),
so this thread fetches the next segments (verified, decrypted, decompressed) into a spool
folder inside the data directory, a few ahead of replay, and the restore_command becomes::

    test -f SPOOL/%f && mv SPOOL/%f %p || safehold wal-fetch ... %f %p

A file appears in the spool only complete (written under a temporary name, then renamed), so
the shell either moves a whole verified segment or falls back to ``wal-fetch``, which also
reports a missing or damaged file exactly as without the read-ahead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from . import pitr_setup, wal
from .wal_chain import Switch

SPOOL = "safehold_wal_spool"
AHEAD = 8  # segments kept ready: 128 MiB of disk at the default segment size


def restore_command(spool: Path, fetch: str) -> str:
    """The restore_command that takes a segment from the spool, else runs ``fetch``."""
    where = pitr_setup.shell_word(str(spool))
    return f"test -f {where}/%f && mv {where}/%f %p || {fetch} %f %p"


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
        self.spool.mkdir(mode=0o700, exist_ok=True)
        (self.spool / ".staging").mkdir(mode=0o700, exist_ok=True)
        self._chown(self.spool)
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
            if self._stop.is_set():
                return
            staged = self.spool / ".staging" / name
            try:
                wal.fetch(self._archive, name, staged, durable=False)
            except wal.WalMissing:
                self.ended = f"the archive ends before {name}"
                return
            except Exception as exc:
                self.ended = f"{name}: {exc}"
                return
            self._chown(staged)  # before it is visible: the server user moves it away
            os.rename(staged, self.spool / name)
            self.fetched += 1

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
