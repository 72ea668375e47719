"""``list_tree``: a snapshot's entries as plain dicts, for ``ls`` and for scripts."""

from __future__ import annotations

from typing import Any

from ..store import ChunkStore
from .chunks import Reading
from .entries import FILE, TYPE_NAMES, Entry
from .subset import clean_path, load_entries, open_tree


def list_tree(
    store: ChunkStore, snapshot_id: str, path: str | None = None, *, recursive: bool = True
) -> list[dict[str, Any]]:
    """The entries of snapshot ``snapshot_id``: all of them, or ``path`` and what is below it
    (only its direct children when ``recursive`` is False), in tree order. Each dict has
    ``path`` (``.`` is the root), ``type`` (dir, file, symlink, hardlink), ``mode``, ``uid``,
    ``gid``, ``mtime_ns``, ``size``, and ``link`` for links (a hardlink names its file)."""
    chosen = clean_path(path) if path is not None else ""
    reading = Reading(store)
    entries = load_entries(reading, open_tree(reading, snapshot_id), chosen or None)
    depth = chosen.count("/") + 1 if chosen else 0
    out = []
    for entry in entries:
        if chosen and not (entry.path == chosen or entry.path.startswith(chosen + "/")):
            continue  # a folder above the path
        if not recursive and entry.path.count("/") + bool(entry.path) > depth + 1:
            continue
        out.append(describe(entry))
    return out


def describe(entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "path": entry.path or ".",
        "type": TYPE_NAMES[entry.type],
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
        "size": entry.size if entry.type == FILE else 0,
    }
    if entry.link:
        item["link"] = entry.link
    if entry.pieces is not None:
        item["sparse"] = True
    return item
