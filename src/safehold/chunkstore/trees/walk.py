"""The walk of a folder being backed up, in the order and with the rules of the tar backup.

Depth first, each folder's children in name order (``sources.tar.tree`` walks the same way, so
a snapshot and a tar archive of a folder list it alike). Only what a restore can make again is
yielded: folders, regular files, symlinks. Sockets, fifos and device nodes are skipped with a
warning; an entry that vanishes while the folder is read is skipped with a warning; an entry
that exists but cannot be read fails the backup (a snapshot silently missing files is worse
than none).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ...errors import UsageError
from ...model import Event, EventSink


@dataclass
class WalkFacts:
    """Counted like ``sources.tar.tree.TreeFacts``: dirs include the root, bytes count each
    inode once; ``cached`` files were known unchanged and not read."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    changed: int = 0
    cached: int = 0
    read_bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def open_root(root: str) -> os.stat_result:
    try:
        # stat, not lstat: like `tar -C`, a root given as a symlink means the folder it names.
        root_stat = os.stat(root)
    except OSError as exc:
        raise UsageError(f"cannot read the folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise UsageError(f"{root} is not a folder", hint="give the folder to back up")
    return root_stat


def walk(
    root: str, facts: WalkFacts, events: EventSink
) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative name, path, lstat)`` of the root ("") and each folder, file and symlink."""
    yield "", root, open_root(root)
    # Reversed lists: the next child is popped from the end.
    stack = [_children(root, "", facts, events)]
    while stack:
        if not stack[-1]:
            stack.pop()
            continue
        rel, path = stack[-1].pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            vanished(rel, facts, events)
            continue
        except OSError as exc:
            raise unreadable(rel, exc) from exc
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield rel, path, st
            stack.append(_children(path, rel, facts, events))
        elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            yield rel, path, st
        else:
            facts.skipped += 1
            warn(
                events,
                rel,
                f"skipped {_kind(mode)} ./{rel}: snapshots hold no special files",
                "special",
            )


def _children(folder: str, rel: str, facts: WalkFacts, events: EventSink) -> list[tuple[str, str]]:
    try:
        names = sorted(os.listdir(folder), reverse=True)
    except FileNotFoundError:
        vanished(rel, facts, events)
        return []
    except OSError as exc:
        raise unreadable(rel, exc) from exc
    prefix = f"{rel}/" if rel else ""
    return [(prefix + name, f"{folder}/{name}") for name in names]


def vanished(rel: str, facts: WalkFacts, events: EventSink) -> None:
    facts.skipped += 1
    warn(events, rel, f"./{rel} vanished while the folder was read; skipped", "vanished")


def warn(events: EventSink, rel: str, message: str, reason: str) -> None:
    events(Event("tree", message, "warning", {"path": f"./{rel}", "reason": reason}))


def unreadable(rel: str, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot read ./{rel} in the folder being backed up: {exc.strerror or exc}",
        hint="run the backup as a user that can read every file of the folder (root)",
    )


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"
