"""A file's data as the store's chunker reads it: the bytes of each data run, nothing else.

A file with holes is read run by run (the map from ``sources.tar.tree.data_map``), so a 1 TiB
disk image with 1 MiB written costs 1 MiB of reading and chunks. The size the backup's fstat
gave is a promise the tree entry makes: a file that shrinks while it is read is padded with
zeros and one that grows is cut, so the entry's chunks always hold exactly its data runs
(the caller warns, as the tar backup does).
"""

from __future__ import annotations

import os

_READ = 8 << 20  # the most handed back per read: big reads, few system calls


class FileData:
    """A reader over ``fd``'s data runs ``pieces`` (offset, length), with positional reads."""

    def __init__(self, fd: int, pieces: list[tuple[int, int]]) -> None:
        self._fd = fd
        self._pieces = [piece for piece in pieces if piece[1]]
        self._index = 0
        self._offset, self._left = self._pieces[0] if self._pieces else (0, 0)
        self.size = sum(length for _, length in self._pieces)  # the bytes it will give
        self.short = 0  # zeros given for bytes the file no longer had

    def read(self, size: int = -1) -> bytes:
        want = _READ if size is None or size < 0 else min(size, _READ)
        if size is None or size < 0:
            parts = []
            while part := self._next(want):
                parts.append(part)
            return b"".join(parts)
        return self._next(want)

    def _next(self, want: int) -> bytes:
        if not self._left:
            return b""
        take = min(want, self._left)
        data = os.pread(self._fd, take, self._offset)
        if not data:
            data = bytes(take)
            self.short += take
        self._advance(len(data))
        return data

    def _advance(self, count: int) -> None:
        self._offset += count
        self._left -= count
        if not self._left and self._index + 1 < len(self._pieces):
            self._index += 1
            self._offset, self._left = self._pieces[self._index]
