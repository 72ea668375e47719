"""``backup_tree``: a folder into the chunk store as one snapshot.

Each file's data goes through the writer's chunker (deduplicated against everything the store
holds); its entry, with the chunk ids and lengths, goes into the tree blobs; the snapshot body
lists those blobs. Files the files cache knows unchanged are not opened at all, when the store
still holds every chunk they had. A file read while it changes keeps the size its fstat gave
(see :mod:`.content`) and is reported with a warning, as the tar backup does.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

from ...model import EventSink, null_sink
from ...sources.tar.tree import data_map
from ...sources.tar.walk import Walker, open_root
from ..snapshots import SnapshotInfo
from ..store import ChunkStore
from ..writer import ChunkStoreWriter
from .chunks import put_content, reuse, store_id
from .content import FileData
from .entries import DIR, FILE, HARDLINK, SYMLINK, Entry
from .filescache import FilesCache, Known
from .treeblobs import FORMAT, TreeBlobs
from .walk import WalkFacts, snapshot_walker, walk

_SEQUENTIAL = 1 << 20  # files this big are read with a read-ahead hint


def backup_tree(
    store: ChunkStore,
    root: Path,
    target: str,
    *,
    cache_dir: Path | None = None,
    events: EventSink = null_sink,
    group: dict[str, Any] | None = None,
) -> SnapshotInfo:
    """Back up the folder ``root`` as a snapshot of ``target``; returns the SnapshotInfo.
    ``group``: the set it is a member of (``SnapshotInfo.group``)."""
    top = os.fspath(root)
    open_root(top)  # a missing root fails before the store is locked
    facts = WalkFacts()
    walker = snapshot_walker(facts, events)
    cache = FilesCache.for_target(cache_dir, store_id(store), target, time.time_ns())
    with store.writer(target, "tree", group=group) as writer:
        blobs = TreeBlobs(writer)
        files = _Files(writer, cache, facts, walker)
        for rel, path, st in walk(top, walker):
            entry = files.entry(rel, path, st)
            if entry is not None:
                blobs.add(entry)
        body = {"format": FORMAT, "trees": blobs.finish()}
        info = writer.commit(body, facts.to_json())
    cache.save()
    return info


class _Files:
    def __init__(
        self, writer: ChunkStoreWriter, cache: FilesCache, facts: WalkFacts, walker: Walker
    ) -> None:
        self._writer = writer
        self._cache = cache
        self._facts = facts
        self._walker = walker
        self._links: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name, nlink > 1 only

    def entry(self, rel: str, path: str, st: os.stat_result) -> Entry | None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._facts.dirs += 1
            return _meta(rel, DIR, st)
        if stat.S_ISLNK(mode):
            return self._symlink(rel, path, st)
        first = self._links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first is not None:
            self._facts.hardlinks += 1
            link = _meta(rel, HARDLINK, st)
            link.link = first
            return link
        known = self._cache.lookup(rel, st)
        entry: Entry | None
        if known is not None and reuse(self._writer, known.chunks):
            self._facts.cached += 1
            self._cache.note(rel, st, known)
            entry = self._file(rel, st, known)
        else:
            entry = self._read(rel, path)
        if entry is not None and st.st_nlink > 1:
            self._links[(st.st_dev, st.st_ino)] = rel
        return entry

    def _symlink(self, rel: str, path: str, st: os.stat_result) -> Entry | None:
        try:
            link = os.readlink(path)
        except FileNotFoundError:
            self._walker.vanished(rel)
            return None
        except OSError as exc:
            raise self._walker.unreadable(rel, exc) from exc
        self._facts.symlinks += 1
        entry = _meta(rel, SYMLINK, st)
        entry.link = link
        return entry

    def _read(self, rel: str, path: str) -> Entry | None:
        # O_NOFOLLOW/O_NONBLOCK: if the entry was swapped for a symlink or a fifo since lstat,
        # opening it must neither leave the tree nor hang; fstat below then sees the change.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            self._walker.vanished(rel)
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._walker.vanished(rel)
                return None
            raise self._walker.unreadable(rel, exc) from exc
        try:
            return self._read_fd(rel, fd)
        except OSError as exc:
            raise self._walker.unreadable(rel, exc) from exc
        finally:
            os.close(fd)

    def _read_fd(self, rel: str, fd: int) -> Entry | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self._walker.vanished(rel)
            return None
        size = st.st_size
        # Only a file with fewer blocks than its size can have holes worth a map.
        pieces = data_map(fd, size) if st.st_blocks * 512 < size else None
        chunks: list[bytes] = []
        lengths: list[int] = []
        data = FileData(fd, pieces if pieces is not None else [(0, size)])
        if data.size >= _SEQUENTIAL:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if data.size:
            chunks, lengths = put_content(self._writer, data)
        self._facts.read_bytes += data.size
        after = os.fstat(fd)
        known = Known(chunks, lengths, pieces)
        if not self._walker.changed(rel, st, after, data.short):
            self._cache.note(rel, st, known)
        return self._file(rel, st, known)

    def _file(self, rel: str, st: os.stat_result, known: Known) -> Entry:
        self._facts.files += 1
        self._facts.bytes += st.st_size
        entry = _meta(rel, FILE, st)
        entry.size = st.st_size
        entry.chunks, entry.lengths, entry.pieces = known.chunks, known.lengths, known.pieces
        return entry


def _meta(rel: str, kind: str, st: os.stat_result) -> Entry:
    return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
