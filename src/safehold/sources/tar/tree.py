"""A directory tree as a tar stream, with the content ``tar cf - -C ROOT .`` would give.

One pass, bounded memory: entries are visited depth first in name order, file data goes from
the page cache into one reused 1 MiB buffer and out to the sink in whole buffers. Headers are
GNU format (GNU tar's own default: long names via ``././@LongLink``, big numbers in base-256),
byte for byte what :mod:`tarfile` writes; only numeric owners are stored, because a volume's
uids belong to the container that uses it, not to the host's ``/etc/passwd``.

A live volume can change while it is read. The archive stays well-formed whatever happens:
an entry that vanishes is skipped; a file that shrinks is padded with zeros and one that grows
is cut, both to the size its header already promised; each case is a ``warning`` event.
Files with holes are stored as GNU sparse members (``tar --sparse``'s ``S`` type, found
with SEEK_DATA/SEEK_HOLE), so a 1 TiB disk image with 1 MiB written takes 1 MiB in the
archive and comes back sparse from ``tar -xf`` and from restore alike.
Sockets, fifos and device nodes are skipped with a warning (restore refuses them anyway).
Entries that exist but cannot be read fail the backup: an archive silently missing files is
worse than no archive.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ...model import ByteSink, EventSink, null_sink
from .walk import Walker, Wording, open_root

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE  # GNU tar pads the archive to whole 10 KiB records
CHUNK = 1 << 20
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # names that are not UTF-8 go into the archive as their raw bytes


@dataclass
class TreeFacts:
    """What went into the archive; dirs include the root ``./``, bytes count each inode once."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    changed: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


_WORDING = Wording(
    mark="",  # member names start with "./" already
    backup="archive",
    special="tar archives of volumes hold no special files",
    whole="volume",
)


def write_tree(root: Path, sink: ByteSink, *, events: EventSink = null_sink) -> TreeFacts:
    """Write ``root`` and everything below it to ``sink`` as an uncompressed tar stream."""
    root = Path(root)
    root_stat = open_root(root)
    writer = _TreeWriter(root, _TarOut(sink), events)
    writer.run(root_stat)
    return writer.facts


class _TarOut:
    """Fills a fixed buffer with headers and file data and hands it to the sink when full."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._pos = 0
        self.total = 0

    def put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CHUNK - self._pos)
            self._view[self._pos : self._pos + take] = view[:take]
            self._advance(take)
            view = view[take:]

    def zeros(self, count: int) -> None:
        while count:
            take = min(count, CHUNK - self._pos)
            self._view[self._pos : self._pos + take] = bytes(take)
            self._advance(take)
            count -= take

    def read_from(self, fd: int, limit: int) -> int:
        """Read at most ``limit`` bytes of ``fd`` straight into the buffer; 0 means end of file."""
        space = self._view[self._pos : self._pos + min(limit, CHUNK - self._pos)]
        got = os.readv(fd, [space])
        self._advance(got)
        return got

    def pad_block(self) -> None:
        if self.total % BLOCK:
            self.zeros(BLOCK - self.total % BLOCK)

    def close(self) -> None:
        self.zeros(2 * BLOCK)  # the end-of-archive marker
        self.zeros(-self.total % RECORD)
        self._flush()

    def _advance(self, count: int) -> None:
        self._pos += count
        self.total += count
        if self._pos == CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pos:
            self._sink.write(self._view[: self._pos])
            self._pos = 0


class _TreeWriter:
    def __init__(self, root: Path, out: _TarOut, events: EventSink) -> None:
        self._root = os.fspath(root)
        self._out = out
        self._links: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name, nlink > 1 only
        self.facts = TreeFacts()
        self._walker = Walker(self.facts, events, _WORDING)

    def run(self, root_stat: os.stat_result) -> None:
        self._header(".", tarfile.DIRTYPE, root_stat)
        self.facts.dirs += 1
        for name, path, st in self._walker.walk(self._root, "."):
            if stat.S_ISDIR(st.st_mode):
                self._header(name, tarfile.DIRTYPE, st)
                self.facts.dirs += 1
            elif stat.S_ISLNK(st.st_mode):
                self._add_symlink(name, path, st)
            else:
                self._add_file(name, path, st)
        self._out.close()

    def _add_symlink(self, name: str, path: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            self._walker.vanished(name)
            return
        except OSError as exc:
            raise self._walker.unreadable(name, exc) from exc
        self._header(name, tarfile.SYMTYPE, st, target)
        self.facts.symlinks += 1

    def _add_file(self, name: str, path: str, st: os.stat_result) -> None:
        first = self._links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first is not None:
            self._header(name, tarfile.LNKTYPE, st, first)
            self.facts.hardlinks += 1
            return
        # O_NOFOLLOW/O_NONBLOCK: if the entry was swapped for a symlink or a fifo since lstat,
        # opening it must neither leave the tree nor hang; fstat below then sees the change.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            self._walker.vanished(name)
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._walker.vanished(name)
                return
            raise self._walker.unreadable(name, exc) from exc
        try:
            self._copy_file(name, fd)
        finally:
            os.close(fd)

    def _copy_file(self, name: str, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self._walker.vanished(name)
            return
        size = st.st_size
        try:
            # Only a file with fewer blocks than its size can have holes worth a map.
            pieces = data_map(fd, size) if st.st_blocks * 512 < size else None
        except OSError as exc:
            raise self._walker.unreadable(name, exc) from exc
        if pieces is None:
            self._header(name, tarfile.REGTYPE, st)
            pieces = [(0, size)]
        else:
            self._out.put(sparse_header(name, st, pieces))
        short = 0  # bytes the header promised that the file no longer had
        try:
            for offset, left in pieces:
                os.lseek(fd, offset, os.SEEK_SET)
                while left and (got := self._out.read_from(fd, left)):
                    left -= got
                self._out.zeros(left)
                short += left
            after = os.fstat(fd)
        except OSError as exc:
            raise self._walker.unreadable(name, exc) from exc
        self._out.pad_block()
        self._walker.changed(name, st, after, short)
        if st.st_nlink > 1:
            self._links[(st.st_dev, st.st_ino)] = name
        self.facts.files += 1
        self.facts.bytes += size

    def _header(self, name: str, kind: bytes, st: os.stat_result, link: str = "") -> None:
        self._out.put(gnu_header(name, kind, st, link))


# name mode uid gid size mtime chksum type linkname magic uname gname devmajor devminor, then
# the unused prefix and padding: the GNU header layout, as tarfile writes it.
_GNU = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s167x")
_MAX7 = 8**7  # largest number + 1 that fits 7 octal digits (8-byte fields)
_MAX11 = 8**11


def gnu_header(name: str, kind: bytes, st: os.stat_result, link: str = "") -> bytes:
    """The GNU-format header(s) for one entry, byte for byte what ``TarInfo.tobuf`` builds.

    tarfile needs ~40 us per header, a third of the time of a tree of small files; the
    common case (short names, small numbers) is packed here in a few, the rest goes to
    tarfile (long names, huge ids or sizes, mtimes before 1970).
    """
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    size = st.st_size if kind == tarfile.REGTYPE else 0
    mtime = st.st_mtime_ns // 1_000_000_000  # whole seconds, floored, as GNU tar stores
    raw_name = name.encode(ENCODING, ERRORS)
    raw_link = link.encode(ENCODING, ERRORS)
    if (
        len(raw_name) <= 100
        and len(raw_link) <= 100
        and uid < _MAX7
        and gid < _MAX7
        and size < _MAX11
        and 0 <= mtime < _MAX11
    ):
        block = _GNU.pack(
            raw_name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid, b"%011o\0" % size,
            b"%011o\0" % mtime, b" " * 8, kind, raw_link, tarfile.GNU_MAGIC, b"", b"",
            b"", b"",
        )  # fmt: skip
        # The checksum is summed with its own field as eight spaces, then stored "%06o\0 ".
        return block[:148] + b"%06o\0 " % sum(block) + block[156:]
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    return info.tobuf(tarfile.GNU_FORMAT, ENCODING, ERRORS)


def data_map(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The ``(offset, length)`` of each run of data of a file with holes, as SEEK_DATA and
    SEEK_HOLE find them, ending with ``(size, 0)`` when the file ends in a hole (GNU tar
    needs that piece to cut the file to its size); None when there is no hole to keep."""
    pieces: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from pos to the end
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None  # a filesystem that cannot say
            raise
        if start >= size:
            break
        pos = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        pieces.append((start, pos - start))
    if pieces == [(0, size)]:
        return None
    if not pieces or sum(pieces[-1]) < size:
        pieces.append((size, 0))
    return pieces


def _number(value: int) -> bytes:
    """A 12-byte GNU number field: octal, or base-256 beyond what 11 octal digits hold."""
    return b"%011o\0" % value if value < _MAX11 else b"\x80" + value.to_bytes(11, "big")


def sparse_header(name: str, st: os.stat_result, pieces: list[tuple[int, int]]) -> bytes:
    """An old GNU sparse member's headers (``tar --sparse --format=gnu``, type ``S``): the
    size field counts the data stored; the map has four pieces in the header and 21 in each
    extension block that follows; the real size goes at offset 483."""
    stored = sum(length for _, length in pieces)
    fields = (st.st_mode, 0, 0, 1, st.st_uid, st.st_gid, stored, 0, 0, 0)
    fake = os.stat_result(fields, {"st_mtime_ns": st.st_mtime_ns})
    blocks = gnu_header(name, tarfile.REGTYPE, fake)
    head = bytearray(blocks[-BLOCK:])
    slots = [_number(offset) + _number(length) for offset, length in pieces]
    head[156:157] = tarfile.GNUTYPE_SPARSE
    head[386:482] = b"".join(slots[:4]).ljust(96, b"\0")
    head[482] = len(slots) > 4
    head[483:495] = _number(st.st_size)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    extensions = []
    for first in range(4, len(slots), 21):
        more = b"".join(slots[first : first + 21]).ljust(504, b"\0")
        extensions.append(more + bytes([first + 21 < len(slots)]) + bytes(7))
    return blocks[:-BLOCK] + bytes(head) + b"".join(extensions)
