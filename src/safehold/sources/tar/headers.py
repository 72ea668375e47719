"""Tar headers read the way GNU tar reads them, for extract.py and volume_api.py.

:mod:`tarfile` parses a single header block well (checksums, base-256 numbers, the ustar
prefix, old V7 folders), so :meth:`TarInfo.frombuf` does that; what comes around the block is
decided here, because tarfile decides it differently from GNU tar (``tar`` 1.34, checked with
hand-made archives):

- of several ``x`` (pax) headers before one member only the last counts, whole: an earlier
  one is dropped, not merged (tarfile keeps the first); of several ``L``/``K`` (GNU long
  name/link) headers the last counts; a pax ``path``/``linkpath`` beats an ``L``/``K`` in
  either order; ``g`` headers merge into defaults for every later member;
- ``GNU.sparse.name`` beats ``path`` (tarfile applies them in record order, so GNU tar's pax
  sparse 0.1 form with a long name came out under its ``GNUSparseFile.PID/`` stand-in name);
- pax ``mtime`` is kept to the nanosecond (tarfile's float loses the last digits);
- sparse members in all of GNU tar's forms: old GNU ``S`` headers (with extension blocks),
  pax 0.0 (repeated offset/numbytes records), 0.1 (``GNU.sparse.map``) and 1.0 (the map at the
  start of the data). Their maps are checked: pieces in order, inside the file, adding up to
  the data stored.

A NUL byte inside a pax name is kept, so that :func:`~.names.member_path` refuses it: GNU
tar would silently cut the name there.
"""

from __future__ import annotations

import re
import struct
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...errors import SafeholdError
from ...model import ByteSource

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1 << 20
ENCODING = "utf-8"
ERRORS = "surrogateescape"
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_MAX_EXTENDED = 16 << 20  # a bigger pax or long-name header is an attack, not a name
_RECORD = re.compile(rb"(\d+) ")
# A header block's fields: name mode uid gid size mtime chksum type linkname magic+version uname
# gname devmajor devminor prefix, then 12 unused bytes.
_LAYOUT = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_NUMBERS = (1, 2, 3, 4, 5, 6, 12, 13)

Take = Callable[[int], bytes]


@dataclass
class Entry:
    """One member with its extended headers applied. ``info.size`` is the file's size;
    ``stored`` is how many data bytes follow in the archive (the consumer takes them, plus the
    padding to a whole block, before asking for the next entry); ``pieces`` is the sparse map,
    ``(offset, length)`` of each stored piece in the file, None for a plain member."""

    info: tarfile.TarInfo
    mtime_ns: int
    stored: int
    pieces: list[tuple[int, int]] | None = None

    @property
    def padded(self) -> int:
        return self.stored + -self.stored % BLOCK


class Feed:
    """Exact reads of a stream taken in the source's own chunks: headers as bytes, file data as
    views of those chunks (not copied on the way to ``os.write``). ``short()`` is raised when
    the stream ends before the bytes asked for."""

    def __init__(self, source: ByteSource, short: Callable[[], BaseException]) -> None:
        self._source = source
        self._short = short
        self._view = memoryview(b"")

    def take(self, size: int) -> bytes:
        view = self._view
        if len(view) >= size:
            self._view = view[size:]
            return view[:size].tobytes()
        parts = [view.tobytes()]
        size -= len(view)
        while size:
            view = self._fill()
            parts.append(view[:size].tobytes())
            size -= len(parts[-1])
            self._view = view[len(parts[-1]) :]
        return b"".join(parts)

    def views(self, size: int) -> Iterator[memoryview]:
        """The next ``size`` bytes, piece by piece (views: each keeps its chunk alive)."""
        while size:
            view = self._view or self._fill()
            piece = view[:size]
            self._view = view[len(piece) :]
            size -= len(piece)
            yield piece

    def drain(self) -> None:
        """Read to the end: the caller may hash the stream, so it must see every byte."""
        self._view = memoryview(b"")
        while self._source.read(CHUNK):
            pass

    def _fill(self) -> memoryview:
        data = self._source.read(CHUNK)
        if not data:
            raise self._short()
        self._view = memoryview(data)
        return self._view


def entries(take: Take, damaged: Callable[[str], SafeholdError]) -> Iterator[Entry]:
    """Each member of the stream that ``take(n)`` (exactly n bytes, or raise) reads, up to the
    end marker; ``damaged(what)`` is raised for what no tar tool could read."""
    defaults: list[tuple[str, bytes]] = []
    pax: list[tuple[str, bytes]] = []
    long: dict[bytes, str] = {}
    while (block := take(BLOCK)).count(0) != BLOCK:
        try:
            info = header(block)
        except tarfile.HeaderError as exc:
            raise damaged(f"a damaged header ({exc})") from exc
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, *_LONG):
            if not 0 <= info.size <= _MAX_EXTENDED:
                raise damaged(f"an extended header of {info.size} bytes")
            data = take(info.size + -info.size % BLOCK)[: info.size]
            if info.type in _LONG:
                long[info.type] = data.split(b"\0", 1)[0].decode(ENCODING, ERRORS)
            elif info.type == tarfile.XHDTYPE:
                pax = _records(data, damaged)
            else:
                defaults += _records(data, damaged)
            continue
        try:
            yield _entry(info, block, take, defaults + pax, long)
        except (ValueError, IndexError) as exc:
            raise damaged(f"a damaged header for {info.name!r} ({exc})") from exc
        pax, long = [], {}


def header(block: bytes) -> tarfile.TarInfo:
    """``TarInfo.frombuf(block)``, in a third of the time for the usual block: plain octal
    numbers, the unsigned checksum, no old GNU sparse map (a restore reads one per member, and
    frombuf was a quarter of a restore's Python time). Any other block is left to frombuf."""
    fields = _LAYOUT.unpack(block)
    try:
        mode, uid, gid, size, mtime, chksum, major, minor = [
            int(fields[i].split(b"\0", 1)[0] or b"0", 8) for i in _NUMBERS
        ]
    except ValueError:  # base-256, blanks, or damage: frombuf decides
        return tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
    if fields[7] == tarfile.GNUTYPE_SPARSE or chksum != 256 + sum(block) - sum(block[148:156]):
        return tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
    info = tarfile.TarInfo(_text(fields[0]))
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    info.chksum, info.type, info.linkname = chksum, fields[7], _text(fields[8])
    info.uname, info.gname = _text(fields[10]), _text(fields[11])
    info.devmajor, info.devminor = major, minor
    if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE  # an old V7 folder
    if info.type == tarfile.DIRTYPE:
        info.name = info.name.rstrip("/")
    prefix = _text(fields[14])
    if prefix and info.type not in tarfile.GNU_TYPES:
        info.name = f"{prefix}/{info.name}"
    return info


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(ENCODING, ERRORS)


def _entry(
    info: tarfile.TarInfo,
    block: bytes,
    take: Take,
    records: list[tuple[str, bytes]],
    long: dict[bytes, str],
) -> Entry:
    fields = {key: value.decode(ENCODING, ERRORS) for key, value in records}
    info.name = long.get(tarfile.GNUTYPE_LONGNAME, info.name)
    info.linkname = long.get(tarfile.GNUTYPE_LONGLINK, info.linkname)
    info.name = fields.get("GNU.sparse.name", fields.get("path", info.name))
    info.linkname = fields.get("linkpath", info.linkname)
    info.uid = int(fields.get("uid", info.uid))
    info.gid = int(fields.get("gid", info.gid))
    info.uname = fields.get("uname", info.uname)
    info.gname = fields.get("gname", info.gname)
    size = int(fields.get("size", info.size))
    mtime_ns = _nanoseconds(fields["mtime"]) if "mtime" in fields else int(info.mtime) * 10**9
    info.mtime = mtime_ns // 10**9
    if info.type not in REGULAR:
        info.size = size
        return Entry(info, mtime_ns, 0)
    pieces: list[tuple[int, int]] | None = None
    stored = size
    if info.type == tarfile.GNUTYPE_SPARSE:
        pieces, size = _old_gnu_map(block, take), _number(block[483:495])
    elif "GNU.sparse.map" in fields:  # pax 0.1
        numbers = [int(n) for n in fields["GNU.sparse.map"].split(",") if n]
        pieces, size = _pairs(numbers), int(fields["GNU.sparse.size"])
    elif "GNU.sparse.size" in fields:  # pax 0.0: the records repeat, in order
        starts = [int(v) for k, v in records if k == "GNU.sparse.offset"]
        lengths = [int(v) for k, v in records if k == "GNU.sparse.numbytes"]
        if len(starts) != len(lengths):
            raise ValueError("unpaired sparse records")
        pieces, size = list(zip(starts, lengths, strict=True)), int(fields["GNU.sparse.size"])
    elif fields.get("GNU.sparse.major") == "1":  # pax 1.0: the map opens the data
        if fields.get("GNU.sparse.minor") != "0":
            raise ValueError("an unknown sparse format version")
        pieces, used = _data_map(take)
        size, stored = int(fields["GNU.sparse.realsize"]), stored - used
    info.type = tarfile.REGTYPE if info.type == tarfile.GNUTYPE_SPARSE else info.type
    info.size = size
    if min(size, stored) < 0:
        raise ValueError("a negative size")
    if pieces is not None:
        pieces = _checked(pieces, size, stored)
    return Entry(info, mtime_ns, stored, pieces)


def _records(data: bytes, damaged: Callable[[str], SafeholdError]) -> list[tuple[str, bytes]]:
    """``"%d %s=%s\\n"`` records, in order (pax 0.0 sparse maps repeat keys)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data) and data[pos]:
        match = _RECORD.match(data, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length
        if match is None or end <= match.end() or end > len(data) or data[end - 1] != 10:
            raise damaged("a damaged pax header")
        key, sep, value = data[match.end() : end - 1].partition(b"=")
        if not sep:
            raise damaged("a damaged pax header")
        out.append((key.decode(ENCODING, ERRORS), value))
        pos = end
    return out


def _nanoseconds(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"the mtime {text!r}")
    return sign * (int(whole) * 10**9 + int((frac + "000000000")[:9]))


def _number(field: bytes) -> int:
    """An octal field, or base-256 (GNU's form for big numbers) as tarfile reads them."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _old_gnu_map(block: bytes, take: Take) -> list[tuple[int, int]]:
    """The four pieces in the header, then 21 per extension block while ``isextended``."""
    pieces: list[tuple[int, int]] = []
    area, count, extended = block[386:482], 4, block[482]
    while True:
        for i in range(count):
            field = area[i * 24 : i * 24 + 24]
            if field[0] == 0:  # an empty slot ends the map
                break
            pieces.append((_number(field[:12]), _number(field[12:])))
        if not extended:
            return pieces
        more = take(BLOCK)
        area, count, extended = more[:504], 21, more[504]


def _data_map(take: Take) -> tuple[list[tuple[int, int]], int]:
    """The 1.0 map: decimal numbers, one a line (count, then offset and length pairs),
    padded to a whole block. Returns it and the bytes it took."""
    buf = take(BLOCK)
    used = BLOCK
    numbers: list[int] = []
    wanted = -1
    while wanted < 0 or len(numbers) < 1 + 2 * wanted:
        if b"\n" not in buf:
            if used > _MAX_EXTENDED:
                raise ValueError("a sparse map too long")
            buf += take(BLOCK)
            used += BLOCK
            continue
        line, buf = buf.split(b"\n", 1)
        numbers.append(int(line))
        wanted = numbers[0]
    return _pairs(numbers[1:]), used


def _pairs(numbers: list[int]) -> list[tuple[int, int]]:
    if len(numbers) % 2:
        raise ValueError("a sparse map with an odd count of numbers")
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def _checked(pieces: list[tuple[int, int]], size: int, stored: int) -> list[tuple[int, int]]:
    end = 0
    for offset, length in pieces:
        if offset < end or length < 0 or offset + length > size:
            raise ValueError("a sparse map out of order or beyond the file's size")
        end = offset + length
    if sum(length for _, length in pieces) != stored:
        raise ValueError("a sparse map that does not add up to the data stored")
    return [(offset, length) for offset, length in pieces if length]
