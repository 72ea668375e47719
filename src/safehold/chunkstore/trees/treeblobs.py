"""A tree as blobs: cut where the names say, listed in the snapshot body with their first path.

The entries go into ``tree`` blobs of about 4 MiB. Where a blob ends depends on the names
only (a cut after an entry whose path hashes to 0 modulo ``_ODDS``, once the blob holds
``MIN_BLOB``), not on byte counts, so a file added or changed early in the tree moves no later
cut and every unchanged stretch of the tree is the same blob as last time: stored once.

The body lists each blob with the path of its first entry. Entries are in depth-first name
order, so a path's entry, and the entries below a folder (which follow it without a gap), are
found by a binary search over those first paths: ``ls`` and ``restore --include`` read one or
two tree blobs whatever the size of the snapshot.
"""

from __future__ import annotations

import bisect
import itertools
import zlib
from collections.abc import Iterable
from typing import Any, Protocol

from .entries import Entry, damaged, decode_lines, sort_key

FORMAT = "safehold-tree-1"
MIN_BLOB = 2 << 20
MAX_BLOB = 8 << 20
_ODDS = 8192  # ~2 MiB more after MIN_BLOB at ~250 bytes an entry


class BlobWriter(Protocol):
    def put_blob(self, data: bytes, kind: str = ...) -> bytes: ...


class BlobReader(Protocol):
    def read_blobs(self, ids: Iterable[bytes]) -> Iterable[tuple[bytes, bytes]]: ...


class TreeBlobs:
    """Collects entry lines in order and stores them as ``tree`` blobs."""

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._lines: list[bytes] = []
        self._size = 0
        self._first = ""
        self._listing: list[list[Any]] = []

    def add(self, entry: Entry) -> None:
        line = entry.to_line()
        if not self._lines:
            self._first = entry.path
        self._lines.append(line)
        self._size += len(line)
        if self._size >= MAX_BLOB or (
            self._size >= MIN_BLOB and zlib.crc32(_raw(entry.path)) % _ODDS == 0
        ):
            self._cut()

    def finish(self) -> list[list[Any]]:
        """The body's ``trees`` list: ``[blob id hex, first path, entries]`` per blob."""
        self._cut()
        return self._listing

    def _cut(self) -> None:
        if not self._lines:
            return
        blob = self._writer.put_blob(b"".join(self._lines), kind="tree")
        self._listing.append([blob.hex(), self._first, len(self._lines)])
        self._lines, self._size = [], 0


class TreeIndex:
    """The body's list of tree blobs, checked, and the lookups over it."""

    def __init__(self, body: dict[str, Any]) -> None:
        if body.get("format") != FORMAT:
            raise damaged(f"the snapshot is not a folder tree (format {body.get('format')!r})")
        listing = body.get("trees")
        if not isinstance(listing, list) or not listing:
            raise damaged("the snapshot lists no tree blobs")
        self.ids: list[bytes] = []
        self.firsts: list[tuple[str, ...]] = []
        self.counts: list[int] = []
        # Blobs already read and checked: a restore of part of a tree asks again for some
        # (its hardlinks' files), and each is fetched once.
        self.decoded: dict[int, list[Entry]] = {}
        for item in listing:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], str)
                and type(item[2]) is int
            ):
                raise damaged("a tree blob of the snapshot is listed wrongly")
            try:
                self.ids.append(bytes.fromhex(item[0]))
            except ValueError:
                raise damaged("a tree blob id is not hex") from None
            self.firsts.append(sort_key(item[1]))
            self.counts.append(item[2])
        if self.firsts[0] != () or any(a >= b for a, b in itertools.pairwise(self.firsts)):
            raise damaged("the snapshot's tree blobs are not in order")

    def holding(self, path: str) -> int:
        """The index of the blob that holds ``path``'s entry, if the tree has it."""
        return bisect.bisect_right(self.firsts, sort_key(path)) - 1

    def subtree(self, path: str) -> range:
        """The blobs that hold ``path`` and everything below it."""
        start = self.holding(path)
        key = sort_key(path)
        end = start + 1
        while end < len(self.firsts) and self.firsts[end][: len(key)] == key:
            end += 1
        return range(start, end)


def _raw(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def read_trees(
    store: BlobReader, index: TreeIndex, wanted: Iterable[int]
) -> dict[int, list[Entry]]:
    """The entries of the tree blobs ``wanted`` (indexes into ``index``), each checked: in
    strict depth-first order, starting with the path the body lists, as many as it says."""
    asked = sorted(set(wanted))
    numbers: dict[bytes, list[int]] = {}
    for number in asked:
        if number not in index.decoded:
            numbers.setdefault(index.ids[number], []).append(number)
    out = index.decoded
    for blob_id, data in store.read_blobs(list(numbers)):
        entries = decode_lines(data)
        keys = [sort_key(entry.path) for entry in entries]
        for number in numbers.pop(blob_id, []):
            if len(entries) != index.counts[number] or not keys or keys[0] != index.firsts[number]:
                raise damaged("a tree blob does not hold what the snapshot lists")
            if number + 1 < len(index.firsts) and keys[-1] >= index.firsts[number + 1]:
                raise damaged("a tree blob overlaps the next one")
            out[number] = entries
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise damaged("a tree blob's entries are not in order (or repeat a path)")
    if numbers:
        raise damaged(f"{len(numbers)} tree blob(s) of the snapshot could not be read")
    return {number: out[number] for number in asked}
