"""The entries a restore or a listing needs: the whole tree, or one path with what is below it
and the folders above it, read from the fewest tree blobs (one or two for a small file, found
by the binary search of :class:`.treeblobs.TreeIndex`)."""

from __future__ import annotations

from ...errors import UsageError
from ...sources.tar.names import member_path
from .chunks import Reading
from .entries import FILE, HARDLINK, Entry, sort_key
from .treeblobs import TreeIndex, read_trees


def open_tree(store: Reading, snapshot_id: str) -> TreeIndex:
    return TreeIndex(store.read_body(snapshot_id))


def clean_path(path: str) -> str:
    """An include or ls path as the tree names it (``/docs/./a`` -> ``docs/a``)."""
    try:
        return member_path(path.lstrip("/"))
    except ValueError as why:
        raise UsageError(
            f"cannot select {path!r} in a snapshot: it {why}",
            hint="give a path inside the snapshot, like docs/report.txt",
        ) from None


def load_entries(store: Reading, index: TreeIndex, path: str | None) -> list[Entry]:
    """The tree's entries in order (``path`` None), or ``path``'s folders from the root down,
    then ``path`` and everything below it. UsageError when the tree has no such path."""
    if path is None or not path:
        blobs = read_trees(store, index, range(len(index.ids)))
        return [entry for number in sorted(blobs) for entry in blobs[number]]
    parts = path.split("/")
    above = ["/".join(parts[:depth]) for depth in range(len(parts))]
    wanted = {index.holding(name) for name in above} | set(index.subtree(path))
    blobs = read_trees(store, index, wanted)
    by_path = {entry.path: entry for number in blobs for entry in blobs[number]}
    chosen = [by_path[name] for name in above if name in by_path]
    key = sort_key(path)
    if path not in by_path:
        raise UsageError(
            f"the snapshot has no {path!r}",
            hint="list the snapshot's files to find the path ('ls')",
        )
    chosen += [
        entry
        for number in sorted(blobs)
        for entry in blobs[number]
        if sort_key(entry.path)[: len(key)] == key
    ]
    return chosen


def own_hardlinks(store: Reading, index: TreeIndex, entries: list[Entry]) -> list[Entry]:
    """A part of a tree whose hardlinks name files outside it: the first such link of each
    file becomes that file (same inode, so same metadata and data); the others link to it."""
    present = {entry.path for entry in entries if entry.type == FILE}
    outside = {e.link for e in entries if e.type == HARDLINK and e.link not in present}
    if not outside:
        return entries
    blobs = read_trees(store, index, {index.holding(name) for name in outside})
    origins = {e.path: e for n in blobs for e in blobs[n] if e.path in outside and e.type == FILE}
    moved: dict[str, str] = {}
    out: list[Entry] = []
    for entry in entries:
        origin = origins.get(entry.link) if entry.type == HARDLINK else None
        if origin is not None and entry.link not in moved:
            moved[entry.link] = entry.path
            entry = Entry(
                entry.path, FILE, origin.mode, origin.uid, origin.gid, origin.mtime_ns,
                origin.size, origin.chunks, origin.lengths, origin.pieces,
            )  # fmt: skip
        elif entry.type == HARDLINK and entry.link in moved:
            entry.link = moved[entry.link]
        out.append(entry)
    return out
