"""``export_tar_gz``: a tree snapshot as the ``.tar.gz`` the tar backup writes.

The archive is what ``tar czf - -C ROOT .`` gives, header for header as
``sources.tar.tree`` writes it (GNU format, ``./`` names, numeric owners, files with holes as
GNU sparse members), gzip-compressed by the project's parallel ``GzipWriter``: ``tar -xzf``,
the seed's restore script and safehold's own tar restore all read it. mtimes keep whole
seconds, as GNU-format headers do. The tree is checked like a restore's before the first byte
is written: an archive is only ever made of a tree that could be restored.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ...compress.gzip import GzipWriter
from ...model import ByteSink
from ...sources.tar.tree import BLOCK, RECORD, gnu_header, sparse_header
from ..store import ChunkStore
from .chunks import Reading
from .entries import DIR, FILE, HARDLINK, SYMLINK, Entry
from .ordered import ordered_chunks
from .plan import make_plan
from .subset import load_entries, open_tree


@dataclass
class ExportFacts:
    members: int = 0
    bytes: int = 0  # file data, holes not counted
    archive: int = 0  # uncompressed tar size

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def export_tar_gz(store: ChunkStore, snapshot_id: str, sink: ByteSink) -> ExportFacts:
    """Write snapshot ``snapshot_id`` to ``sink`` as a gzip-compressed GNU tar archive."""
    reading = Reading(store)
    entries = load_entries(reading, open_tree(reading, snapshot_id), None)
    plan = make_plan(entries, f"export snapshot {snapshot_id}")
    chunks = [chunk for entry in plan.files for chunk in entry.chunks]
    lengths = [length for entry in plan.files for length in entry.lengths]
    data = ordered_chunks(reading, chunks, lengths)
    gzip = GzipWriter(sink)
    facts = ExportFacts()
    try:
        for entry in entries:
            facts.archive += _member(gzip, entry, data)
            facts.members += 1
            facts.bytes += sum(entry.lengths)
        end = 2 * BLOCK + (-(facts.archive + 2 * BLOCK) % RECORD)  # GNU tar's whole records
        gzip.write(bytes(end))
        facts.archive += end
        gzip.finish()
    except BaseException:
        gzip.abort()
        raise
    return facts


def _member(out: GzipWriter, entry: Entry, data: Iterator[bytes]) -> int:
    """Write one entry's header(s) and data; the bytes written."""
    name = f"./{entry.path}" if entry.path else "."
    fake = os.stat_result(
        (entry.mode, 0, 0, 1, entry.uid, entry.gid, entry.size, 0, 0, 0),
        {"st_mtime_ns": entry.mtime_ns},
    )
    if entry.type == DIR:
        header = gnu_header(name, tarfile.DIRTYPE, fake)
    elif entry.type == SYMLINK:
        header = gnu_header(name, tarfile.SYMTYPE, fake, entry.link)
    elif entry.type == HARDLINK:
        header = gnu_header(name, tarfile.LNKTYPE, fake, f"./{entry.link}")
    elif entry.pieces is not None:
        pieces = entry.pieces
        if not pieces or sum(pieces[-1]) < entry.size:
            pieces = [*pieces, (entry.size, 0)]  # GNU tar needs it to cut the file to size
        header = sparse_header(name, fake, pieces)
    else:
        header = gnu_header(name, tarfile.REGTYPE, fake)
    out.write(header)
    if entry.type != FILE:
        return len(header)
    stored = 0
    for _ in entry.chunks:
        chunk = next(data)
        out.write(chunk)
        stored += len(chunk)
    pad = -stored % BLOCK
    out.write(bytes(pad))
    return len(header) + stored + pad
