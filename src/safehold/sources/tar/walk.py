"""The walk of a folder being backed up, shared by the tar backup (:mod:`.tree`) and the chunk
store's tree snapshots, so an archive and a snapshot of a folder list it alike.

Depth first, each folder's children in name order. Only what a restore can make again is
yielded: folders, regular files, symlinks. Sockets, fifos and device nodes are skipped with a
warning; an entry that vanishes while the folder is read is skipped with a warning; an entry
that exists but cannot be read fails the backup (a backup silently missing files is worse
than none). What the messages call names and backups is the caller's :class:`Wording`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ...errors import UsageError
from ...model import Event, EventSink


class Counts(Protocol):
    """What a walk counts (``tree.TreeFacts`` and what derives from it)."""

    skipped: int  # entries left out: special files, and those that vanished
    changed: int  # files that changed while they were read


@dataclass(frozen=True)
class Wording:
    """How a walk's messages speak of what it reads."""

    mark: str  # put before each name shown ("./" for relative names; tar names start with it)
    backup: str  # what holds the backup: "the {backup} holds N bytes of it"
    special: str  # why special files are skipped
    whole: str  # what the backup's user must be able to read every file of


def open_root(root: str | os.PathLike[str]) -> os.stat_result:
    """The stat of the folder to back up; a UsageError when it is missing or not a folder."""
    try:
        # stat, not lstat: like `tar -C`, a root given as a symlink means the folder it names.
        root_stat = os.stat(root)
    except OSError as exc:
        raise UsageError(f"cannot read the folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise UsageError(f"{root} is not a folder", hint="give the folder to back up")
    return root_stat


class Walker:
    """Walks folders, counting what it skips in ``facts`` and warning of it in ``events``."""

    def __init__(self, facts: Counts, events: EventSink, wording: Wording) -> None:
        self._facts = facts
        self._events = events
        self._wording = wording

    def walk(self, folder: str, name: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """``(name, path, lstat)`` of each folder, file and symlink below ``folder``, whose
        name is ``name`` (children of "." are "./a", children of "" are "a")."""
        # Reversed lists: the next child is popped from the end.
        stack = [self._children(folder, name)]
        while stack:
            if not stack[-1]:
                stack.pop()
                continue
            name, path = stack[-1].pop()
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self.vanished(name)
                continue
            except OSError as exc:
                raise self.unreadable(name, exc) from exc
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                yield name, path, st
                stack.append(self._children(path, name))
            elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                yield name, path, st
            else:
                self._facts.skipped += 1
                shown = self._wording.mark + name
                message = f"skipped {_kind(mode)} {shown}: {self._wording.special}"
                self.warn(name, message, "special")

    def _children(self, folder: str, name: str) -> list[tuple[str, str]]:
        try:
            entries = sorted(os.listdir(folder), reverse=True)
        except FileNotFoundError:
            self.vanished(name)
            return []
        except OSError as exc:
            raise self.unreadable(name, exc) from exc
        prefix = f"{name}/" if name else ""
        return [(prefix + entry, f"{folder}/{entry}") for entry in entries]

    def vanished(self, name: str) -> None:
        self._facts.skipped += 1
        shown = self._wording.mark + name
        self.warn(name, f"{shown} vanished while the folder was read; skipped", "vanished")

    def changed(self, name: str, st: os.stat_result, after: os.stat_result, short: int) -> bool:
        """Count and warn of a file that changed while it was read (``st``: its fstat before,
        ``after``: after, ``short``: bytes it no longer had); False when it did not."""
        size = st.st_size
        if not (short or after.st_size != size or after.st_mtime_ns != st.st_mtime_ns):
            return False
        self._facts.changed += 1
        how = "shrank" if short else "grew" if after.st_size > size else "changed"
        self.warn(
            name,
            f"{self._wording.mark}{name} {how} while it was read; the {self._wording.backup} "
            f"holds {size} bytes of it, which may be inconsistent",
            "changed",
        )
        return True

    def warn(self, name: str, message: str, reason: str) -> None:
        data = {"path": self._wording.mark + name, "reason": reason}
        self._events(Event("tree", message, "warning", data))

    def unreadable(self, name: str, exc: OSError) -> UsageError:
        return UsageError(
            f"cannot read {self._wording.mark}{name} in the folder being backed up: "
            f"{exc.strerror or exc}",
            hint=f"run the backup as a user that can read every file of the "
            f"{self._wording.whole} (root)",
        )


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"
