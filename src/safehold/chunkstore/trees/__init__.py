"""What goes into a chunk store snapshot: a folder tree, or one stream (a logical dump).

A **tree snapshot** is a folder walked as the tar backup walks it (depth first, names in order;
folders, files, symlinks, hardlinks, files with holes; modes, numeric owners, mtimes to the
nanosecond). Each file's data goes through the store's chunker, so data already in the store
(from any snapshot, any target) is stored once; each entry becomes one JSON line naming its
chunks and their lengths (:mod:`.entries`). The lines are stored as ``tree`` blobs cut where
the names say (:mod:`.treeblobs`), so unchanged stretches of a tree are not stored again; the
snapshot body, encrypted to the recipients, lists those blobs with their first path, which
lets ``ls`` and ``restore --include`` read only the blobs they need. A host-local **files
cache** (:mod:`.filescache`) lets the next backup skip unchanged files without reading them.

**Restore** reads and checks the whole tree (or part) first (:mod:`.plan`: the tar rules for
names and links), builds it in a staging folder beside the destination, writes each chunk
where it goes as packs arrive (each pack fetched once, :mod:`.writes`), and renames the
staging folder into place. **Export** writes the tar backup's ``.tar.gz`` for the same tree.

A **stream snapshot** is one chunked stream with its size and hash (:mod:`.streams`); its
export gives back the exact bytes, so ``pg_restore`` reads it as it read the dump.

The backup host writes trees it cannot read back: bodies and packs are encrypted to the age
recipients, and only the identity opens them. Restore, ``ls`` and export need it.
"""

from __future__ import annotations

from .backup import backup_tree
from .entries import Entry
from .export import ExportFacts, export_tar_gz
from .listing import list_tree
from .plan import RestoreFacts
from .restore import restore_tree
from .streams import backup_stream, export_stream, stream_meta
from .walk import WalkFacts

__all__ = [
    "Entry",
    "ExportFacts",
    "RestoreFacts",
    "WalkFacts",
    "backup_stream",
    "backup_tree",
    "export_stream",
    "export_tar_gz",
    "list_tree",
    "restore_tree",
    "stream_meta",
]
