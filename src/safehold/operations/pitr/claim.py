"""A point-in-time restore's hold on its target folder, and what a killed one leaves behind.

One restore at a time per folder: an exclusive ``flock`` on ``.NAME.safehold-restore.lock``
beside the folder (the folder itself is created, or moved aside, by the restore), which the
kernel releases when the run dies; a second run is refused at once, naming the first.

The run is journalled (``pitr_restore``) before it changes anything: the folder, whether it
existed (an operator's empty folder or mount point is emptied, never removed), the name the
current cluster is moved aside to with ``--force``, and how its server runs. Until the restore
is complete the folder holds neither the old cluster nor the new one, so a run that fails or is
stopped by a signal rolls back at once, and one killed outright is rolled back by the next
command: the server it started is stopped, the partial folder emptied, and the cluster that was
moved aside put back. Old or new, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ...sources.restored_server import stop_abandoned
from ...storage import LocalStorage
from .. import journal

KIND = "pitr_restore"
PURPOSE = "safehold pitr restore"


@contextlib.contextmanager
def held(target_dir: Path) -> Iterator[None]:
    """Hold ``target_dir`` for this run, or raise UsageError naming the run that does."""
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = target_dir.parent / f".{target_dir.name}.safehold-restore.lock"
    # Never removed: unlinking a lock file others may have open lets two runs hold it at once.
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UsageError(
                f"another restore into {target_dir} is running (pid {holder})",
                hint="wait for it to finish; two restores into one folder would mix their files",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def describe(target_dir: Path, aside: Path | None, run_as: str | None) -> dict[str, Any]:
    """What undoing the restore needs, taken before ``target_dir`` is created, moved aside or
    filled: the journal entry's data, and the run's own ``roll_back``."""
    return {
        "target": str(target_dir),
        "existed": target_dir.is_dir(),
        "aside": str(aside) if aside is not None else None,
        "run_as": run_as,
    }


def record(repo: LocalStorage, data: dict[str, Any]) -> journal.Entry:
    """Journal the restore (``describe``'s data) before it changes anything."""
    return journal.record(repo, KIND, data, PURPOSE)


def roll_back(data: dict[str, Any]) -> str:
    """Undo an unfinished restore from its journal data; one line saying what was done."""
    target = Path(str(data["target"]))
    aside = Path(str(data["aside"])) if data.get("aside") else None
    if aside is not None and not aside.exists():
        return f"nothing to undo in {target}: the restore stopped before it moved the cluster aside"
    done: list[str] = []
    if target.is_dir():
        if (pid := stop_abandoned(target)) is not None:
            done.append(f"stopped the server it started (pid {pid})")
        if data.get("existed") and aside is None:
            for child in list(target.iterdir()):  # the operator's folder (a mount point?) stays
                _remove(child)
        else:
            _remove(target)
        done.append(f"removed the partly restored {target}")
    if aside is not None:
        os.rename(aside, target)
        done.append(f"moved {aside.name} back to {target}")
    return "; ".join(done) or f"nothing was left in {target}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@journal.resolver(KIND)
def _resolve(entry: journal.Entry, context: journal.Context) -> str:
    target = Path(str(entry.data["target"]))
    with held(target):  # a restore running into it now is not ours to undo
        return f"undid an interrupted point-in-time restore: {roll_back(entry.data)}"
