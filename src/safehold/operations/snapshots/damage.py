"""What a damaged pack costs: the files of each snapshot that need one of its blobs.

``verify`` names the packs and, from the headers, the snapshots that need them; with the
identity, this reads those snapshots' trees (tree blobs live in packs of their own, so a
damaged data pack does not hide the names) and names the files.
"""

from __future__ import annotations

from ...chunkstore import ChunkStore
from ...chunkstore.trees.chunks import Reading
from ...chunkstore.trees.subset import load_entries, open_tree
from ...errors import SafeholdError

MAX_NAMED = 50  # files named per snapshot; the count is always exact


def affected_files(store: ChunkStore, snapshot_id: str, blobs: set[bytes]) -> tuple[int, list[str]]:
    """(how many files, up to ``MAX_NAMED`` of their paths) of ``snapshot_id`` that need one
    of ``blobs``. A dump snapshot is one stream: ``(1, ["(database dump)"])``."""
    if store.snapshot(snapshot_id).kind == "stream":
        return 1, ["(database dump)"]
    reading = Reading(store)
    try:
        entries = load_entries(reading, open_tree(reading, snapshot_id), None)
    except SafeholdError as exc:
        return 0, [f"(the tree itself cannot be read: {exc.message})"]
    hit = [e.path for e in entries if blobs.intersection(e.chunks)]
    return len(hit), hit[:MAX_NAMED]
