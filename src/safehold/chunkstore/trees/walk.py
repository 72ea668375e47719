"""The walk of a folder being backed up, in the order and with the rules of the tar backup.

The walk is ``sources.tar.walk``'s, the one ``sources.tar.tree`` makes, so a snapshot and a
tar archive of a folder list it alike: depth first, each folder's children in name order,
folders, regular files and symlinks only. Sockets, fifos and device nodes are skipped with a
warning; an entry that vanishes while the folder is read is skipped with a warning; an entry
that exists but cannot be read fails the backup (a snapshot silently missing files is worse
than none). Names are relative ("" is the root); messages show them as ``./name``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from ...model import EventSink
from ...sources.tar.tree import TreeFacts
from ...sources.tar.walk import Walker, Wording, open_root

WORDING = Wording(
    mark="./",
    backup="snapshot",
    special="snapshots hold no special files",
    whole="folder",
)


@dataclass
class WalkFacts(TreeFacts):
    """Counted like ``sources.tar.tree.TreeFacts``: dirs include the root, bytes count each
    inode once; ``cached`` files were known unchanged and not read."""

    cached: int = 0
    read_bytes: int = 0


def snapshot_walker(facts: WalkFacts, events: EventSink) -> Walker:
    """The walk of a snapshot's folder: counts in ``facts``, warnings to ``events``."""
    return Walker(facts, events, WORDING)


def walk(root: str, walker: Walker) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative name, path, lstat)`` of the root ("") and each folder, file and symlink."""
    yield "", root, open_root(root)
    yield from walker.walk(root, "")
