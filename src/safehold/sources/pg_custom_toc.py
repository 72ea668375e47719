"""pg_dump's custom format (-Fc): read the header and table of contents, and fill in the data
offsets pg_dump leaves unset when it writes to a pipe.

Why: with offsets, ``pg_restore --jobs`` seeks straight to each table's data and schedules the
largest tables first; without them every worker scans the file block by block and the tables
are restored in file order. pg_dump writes the offsets itself only when it can seek back to its
table of contents (``_CloseArchive`` in pg_backup_custom.c rewrites the TOC in place); ``fix``
does the same afterwards: each offset field keeps its size (a flag byte and ``offSize`` bytes,
``WriteOffset``), so no other byte of the file moves.

The layout followed here is pg_backup_archiver.c's ``ReadHead``/``ReadToc`` and
pg_backup_custom.c's data blocks: a block is a type byte (``BLK_DATA``/``BLK_BLOBS``) and the
entry's dump id, then length-prefixed chunks ending with a zero length (a ``BLK_BLOBS`` block
holds such a run per large object, each after its OID, and ends with OID 0). Anything else --
an archive version this module does not know, a block it cannot place, a file that ends inside
a block -- raises ``NotUnderstood`` before a byte is written, and the caller leaves the file as
it is (pg_restore still reads it, only slower).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PGDMP"
ARCH_CUSTOM = 1
BLK_DATA, BLK_BLOBS = 1, 3
POS_NOT_SET, POS_SET, NO_DATA = 1, 2, 3  # K_OFFSET_* of pg_backup_archiver.h
COMPRESSION_NONE = 0
OLDEST_MINOR, NEWEST_MINOR = 7, 16  # 1.7 added the offset flag byte; 1.16 is PostgreSQL 17's
_INT4 = struct.Struct("<BI")  # WriteInt with intSize 4: a sign byte, then little-endian bytes

Buffer = bytes | bytearray | mmap.mmap


class NotUnderstood(ValueError):
    """The file is not a custom-format archive this module can read: leave it as it is."""


class _Short(NotUnderstood):
    """The bytes end before the header or TOC does."""


@dataclass(frozen=True)
class Entry:
    dump_id: int
    desc: str
    state: int  # POS_NOT_SET, POS_SET or NO_DATA
    offset: int
    field_at: int  # file position of the entry's offset flag byte


@dataclass(frozen=True)
class Toc:
    version: tuple[int, int, int]
    int_size: int
    off_size: int
    compression: int  # pg_compress_algorithm: 0 none, 1 gzip, 2 lz4, 3 zstd
    entries: tuple[Entry, ...]
    data_start: int  # the first byte after the TOC, where the data blocks begin

    @property
    def data_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.state != NO_DATA]

    @property
    def offsets_missing(self) -> bool:
        return any(e.state == POS_NOT_SET for e in self.entries)


class _Cursor:
    """ReadByte/ReadInt/ReadStr over a buffer; running past its end is NotUnderstood."""

    def __init__(self, buf: Buffer, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.int_size = 4

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if count < 0:
            raise NotUnderstood("a negative length in the header or table of contents")
        if end > len(self.buf):
            raise _Short("the file ends inside its header or table of contents")
        data = bytes(self.buf[self.pos : end])
        self.pos = end
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def int_(self) -> int:
        raw = self.take(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def str_(self) -> str | None:
        length = self.int_()
        return None if length < 0 else self.take(length).decode("utf-8", "replace")


def read_toc(buf: Buffer) -> Toc:
    """The header and TOC of the archive in ``buf`` (ReadHead, then ReadToc)."""
    cur = _Cursor(buf)
    if cur.take(5) != MAGIC:
        raise NotUnderstood("not a pg_dump custom-format archive (no PGDMP header)")
    version = (cur.byte(), cur.byte(), cur.byte())
    if version[0] != 1 or not OLDEST_MINOR <= version[1] <= NEWEST_MINOR:
        raise NotUnderstood(f"archive version {version[0]}.{version[1]} is not one this reads")
    minor = version[1]
    cur.int_size, off_size, fmt = cur.byte(), cur.byte(), cur.byte()
    if not 1 <= cur.int_size <= 8 or not 4 <= off_size <= 16 or fmt != ARCH_CUSTOM:
        raise NotUnderstood(f"unexpected integer/offset size or format ({fmt}) in the header")
    # before 1.15 a zlib level: 0 is none, anything else gzip
    compression = cur.byte() if minor >= 15 else int(cur.int_() != 0)
    for _ in range(7):  # the creation time, field by field
        cur.int_()
    cur.str_()  # the database name
    if minor >= 10:
        cur.str_()  # server version
        cur.str_()  # pg_dump version
    count = cur.int_()
    if count < 0:
        raise NotUnderstood("negative TOC entry count")
    entries = [_entry(cur, minor, off_size) for _ in range(count)]
    return Toc(version, cur.int_size, off_size, compression, tuple(entries), cur.pos)


def _entry(cur: _Cursor, minor: int, off_size: int) -> Entry:
    dump_id = cur.int_()
    if dump_id <= 0:
        raise NotUnderstood(f"TOC entry id {dump_id} out of range")
    cur.int_()  # hadDumper
    if minor >= 8:
        cur.str_()  # catalog table oid
    cur.str_()  # oid
    cur.str_()  # tag
    desc = cur.str_() or ""
    if minor >= 11:
        cur.int_()  # section
    cur.str_()  # defn
    cur.str_()  # dropStmt
    cur.str_()  # copyStmt
    cur.str_()  # namespace
    if minor >= 10:
        cur.str_()  # tablespace
    if minor >= 14:
        cur.str_()  # tableam
    if minor >= 16:
        cur.int_()  # relkind
    cur.str_()  # owner
    cur.str_()  # "false": the old WITH OIDS flag
    while cur.str_() is not None:  # dependencies, up to a NULL string
        pass
    field_at = cur.pos
    state = cur.byte()
    if state not in (POS_NOT_SET, POS_SET, NO_DATA):
        raise NotUnderstood(f"unexpected data offset flag {state} in entry {dump_id}")
    offset = int.from_bytes(cur.take(off_size), "little")
    return Entry(dump_id, desc, state, offset, field_at)


def block_positions(buf: Buffer, toc: Toc) -> dict[int, int]:
    """Where each data block starts, by dump id: the offsets pg_dump would have written.
    Every block is walked chunk by chunk (one step per chunk: per row in a -Z0 archive)."""
    size = len(buf)
    step = 1 + toc.int_size
    wanted = {e.dump_id for e in toc.data_entries}
    skip = _chunk_skipper(buf, toc.int_size)
    found: dict[int, int] = {}
    pos = toc.data_start
    while pos < size:
        start, kind = pos, buf[pos]
        dump_id = _read_int(buf, pos + 1, step)
        pos += 1 + step
        if kind not in (BLK_DATA, BLK_BLOBS) or dump_id not in wanted or dump_id in found:
            raise NotUnderstood(f"unexpected data block (type {kind}, id {dump_id}) at {start}")
        found[dump_id] = start
        if kind == BLK_BLOBS:
            while _read_int(buf, pos, step) != 0:  # each large object's OID, then its chunks
                pos = skip(pos + step)
            pos += step
        else:
            pos = skip(pos)
    if pos != size:
        raise NotUnderstood("the file ends inside a data block (truncated?)")
    return found


def _read_int(buf: Buffer, pos: int, step: int) -> int:
    raw = bytes(buf[pos : pos + step])
    if len(raw) != step:
        raise NotUnderstood("the file ends inside a data block (truncated?)")
    value = int.from_bytes(raw[1:], "little")
    return -value if raw[0] else value


def _chunk_skipper(buf: Buffer, int_size: int) -> Callable[[int], int]:
    """A function from a block's first chunk header to the byte after its zero-length end."""
    size = len(buf)
    step = 1 + int_size

    def skip4(pos: int, unpack: Callable[[Any, int], tuple[int, int]] = _INT4.unpack_from) -> int:
        try:
            while True:  # the hot loop: one iteration per chunk
                sign, length = unpack(buf, pos)
                pos += 5 + length
                if not length:
                    return pos
                if sign:
                    raise NotUnderstood(f"negative chunk length before {pos}")
        except struct.error:
            raise NotUnderstood("the file ends inside a data block (truncated?)") from None

    def skip_any(pos: int) -> int:
        while (length := _read_int(buf, pos, step)) != 0:
            if length < 0 or pos + step + length > size:
                raise NotUnderstood(f"bad chunk length {length} at {pos}")
            pos += step + length
        return pos + step

    return skip4 if int_size == 4 else skip_any


@dataclass(frozen=True)
class Fixed:
    written: int  # offsets filled in; 0 when the archive had them all
    blocks: int


def fix(path: Path) -> Fixed:
    """Fill in the missing data offsets of the custom-format archive at ``path``, in place.

    Nothing is written unless the whole file was understood: NotUnderstood otherwise. An
    archive whose offsets are all set is only read up to the end of its TOC."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size < len(MAGIC):
            raise NotUnderstood("the file is too short to be a custom-format archive")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            toc = read_toc(buf)
            if not toc.offsets_missing:
                return Fixed(0, len(toc.data_entries))
            found = block_positions(buf, toc)
    return write_offsets(path, toc, found)


def write_offsets(path: Path, toc: Toc, found: dict[int, int]) -> Fixed:
    """Write each found block position into its entry's offset field (same size, in place)."""
    limit = 1 << (8 * toc.off_size)
    fields: list[tuple[int, bytes]] = []
    for entry in toc.entries:
        at = found.get(entry.dump_id)
        if entry.state == POS_SET and at != entry.offset:
            raise NotUnderstood(f"entry {entry.dump_id} has offset {entry.offset}, not {at}")
        if entry.state == POS_NOT_SET and at is not None and at < limit:
            fields.append((entry.field_at, bytes([POS_SET]) + at.to_bytes(toc.off_size, "little")))
    with path.open("r+b") as fh:
        for field_at, value in fields:
            os.pwrite(fh.fileno(), value, field_at)
    return Fixed(len(fields), len(found))


def checked_positions(path: Path, found: dict[int, int]) -> tuple[Toc, dict[int, int]]:
    """The TOC of ``path`` and ``found`` (data block positions recorded elsewhere), once each
    position is seen to hold the header of its entry's block; NotUnderstood otherwise."""
    toc = read_toc_of(path)
    step = 1 + toc.int_size
    with path.open("rb") as fh:
        for entry in toc.data_entries:
            at = found.get(entry.dump_id)
            if at is None:
                raise NotUnderstood(f"no recorded position for entry {entry.dump_id}")
            header = bytes([BLK_DATA, 0]) + entry.dump_id.to_bytes(step - 1, "little")
            if os.pread(fh.fileno(), len(header), at) != header:
                raise NotUnderstood(f"the block at {at} is not entry {entry.dump_id}'s")
    return toc, found


class BlockFinder:
    """``block_positions`` while an archive's bytes go by (being unpacked), so no second pass
    is needed -- for the common case only: uncompressed table data, no large objects.

    Such data is COPY text, which never holds a NUL byte (type output functions return C
    strings), so after a block's header the first run of 1 + intSize zero bytes is its
    zero-length end, found by a C-speed search instead of a Python step per row; it must be
    followed by the header of the block pg_dump writes next (TOC order), and the last block
    must end the stream. ``feed`` the bytes in order; ``result`` is None when this could not
    decide (the caller then runs ``fix``) or there is nothing to fill in."""

    HEAD_LIMIT = 64 << 20  # a TOC larger than this is left to ``fix``

    def __init__(self) -> None:
        self._head: bytearray | None = bytearray()  # the bytes, until the TOC parses
        self._parse_at = 0  # head size for the next parse attempt (doubling: linear overall)
        self._toc: Toc | None = None
        self._order: list[Entry] = []
        self._found: dict[int, int] = {}
        self._size = 0  # bytes fed so far
        self._recent = b""  # the last bytes fed before the current piece
        self._at = 0  # the next block header's position, or where the block end is sought
        self._seeking = False  # True: searching for the current block's end from ``_at``
        self.failed: str | None = None

    def feed(self, piece: bytes | memoryview) -> None:
        data, start = bytes(piece), self._size
        self._size += len(data)
        if self.failed is not None:
            return
        if self._head is not None:
            self._head += data
            if len(self._head) < self._parse_at or not self._parse_head():
                return
            data, start, self._recent, self._head = bytes(self._head), 0, b"", None
        try:
            self._advance(data, start)
        except NotUnderstood as exc:
            self.failed = str(exc)
        self._recent = (self._recent + data[-16:])[-16:]

    def _parse_head(self) -> bool:
        assert self._head is not None
        try:
            toc = read_toc(self._head)
        except _Short:
            self._parse_at = 2 * len(self._head)
            if len(self._head) > self.HEAD_LIMIT:
                self.failed, self._head = "the table of contents is too large to hold", None
            return False
        except NotUnderstood as exc:
            self.failed, self._head = str(exc), None
            return False
        order = toc.data_entries
        if toc.compression != COMPRESSION_NONE or any(e.desc == "BLOBS" for e in order):
            self.failed = "compressed data or large objects: walked chunk by chunk instead"
        elif not toc.offsets_missing or not order:
            self.failed = "nothing to fill in"
        self._toc, self._order, self._at = toc, order, toc.data_start
        if self.failed is not None:
            self._head = None
        return self.failed is None

    def _advance(self, data: bytes, start: int) -> None:
        assert self._toc is not None
        step = 1 + self._toc.int_size
        mark = bytes(step) + bytes([BLK_DATA])  # a block's end, then the next block's type
        while len(self._found) < len(self._order):
            if self._seeking:  # a mark starting in the previous piece, else in this one
                tail = self._recent[-(len(mark) - 1) :]
                hit = (tail + data[: len(mark) - 1]).find(
                    mark, max(0, self._at - start + len(tail))
                )
                hit = start - len(tail) + hit if hit >= 0 else -1
                if hit < 0:
                    hit = data.find(mark, max(0, self._at - start))
                    hit = start + hit if hit >= 0 else -1
                if hit < 0:
                    return  # not in this piece
                self._at, self._seeking = hit + step, False
            entry = self._order[len(self._found)]
            header = self._bytes(self._at, 1 + step, data, start)
            if header is None:
                return
            if header != bytes([BLK_DATA, 0]) + entry.dump_id.to_bytes(step - 1, "little"):
                raise NotUnderstood(f"the block at {self._at} is not entry {entry.dump_id}'s")
            self._found[entry.dump_id] = self._at
            self._at, self._seeking = self._at + 1 + step, True

    def _bytes(self, at: int, count: int, data: bytes, start: int) -> bytes | None:
        if at + count > start + len(data):
            return None  # in the next piece
        if at >= start:
            return data[at - start : at - start + count]
        return (self._recent[len(self._recent) - (start - at) :] + data)[:count]

    def result(self) -> tuple[Toc, dict[int, int]] | None:
        """The TOC and every data block's position, once all the bytes were fed."""
        toc = self._toc
        if self.failed is not None or toc is None or len(self._found) < len(self._order):
            return None
        end = bytes(1 + toc.int_size)
        if self._size < self._at + len(end) or not self._recent.endswith(end):
            return None  # the last block does not end the stream
        return toc, self._found


def read_toc_of(path: Path) -> Toc:
    """The TOC of the archive at ``path`` (only its head is read)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size < len(MAGIC):
            raise NotUnderstood("the file is too short to be a custom-format archive")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return read_toc(buf)
