"""One tree entry and its JSON line: the record a snapshot keeps for each file, folder or link.

A line is a compact JSON object with short keys, defaults left out, so a tree of a million
small files stays a few hundred MB before zstd (the store compresses tree blobs):

    {"p":"docs/a.txt","t":"f","m":420,"u":0,"g":0,"T":1600000000123456789,"s":6,
     "c":["<64 hex>"],"n":[6]}

``p`` path below the root ("" is the root), ``t`` type (d folder, f file, l symlink,
h hardlink to the earlier file ``l``), ``m`` permission bits, ``u``/``g`` numeric owner,
``T`` mtime in ns, ``s`` size, ``c``/``n`` chunk ids and their lengths (the file's data in
order), ``x`` the data map of a file with holes (``[offset, length]`` runs; the chunks hold
only those bytes), ``l`` link target. Names that are not UTF-8 keep their raw bytes as
surrogate escapes, which JSON's ``\\udcXX`` escapes carry through.

Decoding trusts nothing: a snapshot body is encrypted to public recipients, so a tree may have
been written by anyone holding them. Every field's type and range is checked here; what names
may be is checked by :mod:`.plan` with the tar rules.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...errors import IntegrityError

DIR, FILE, SYMLINK, HARDLINK = "d", "f", "l", "h"
TYPES = frozenset((DIR, FILE, SYMLINK, HARDLINK))
TYPE_NAMES = {DIR: "dir", FILE: "file", SYMLINK: "symlink", HARDLINK: "hardlink"}
ID_BYTES = 32
_MAX_ID = 1 << 32  # uids and gids are 32-bit on Linux
_MAX_SIZE = 1 << 63


@dataclass(slots=True)
class Entry:
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    pieces: list[tuple[int, int]] | None = None  # data runs of a file with holes
    link: str = ""

    def data_pieces(self) -> list[tuple[int, int]]:
        """Where the chunks' bytes go in the file, in order."""
        return self.pieces if self.pieces is not None else [(0, self.size)] if self.size else []

    def to_line(self) -> bytes:
        # ensure_ascii: a surrogate-escaped byte becomes "\\udcXX", valid JSON and UTF-8.
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "p": self.path,
            "t": self.type,
            "m": self.mode,
            "u": self.uid,
            "g": self.gid,
            "T": self.mtime_ns,
        }
        if self.size:
            out["s"] = self.size
        if self.chunks:
            out["c"] = [chunk.hex() for chunk in self.chunks]
            out["n"] = self.lengths
        if self.pieces is not None:
            out["x"] = [list(piece) for piece in self.pieces]
        if self.link:
            out["l"] = self.link
        return out


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a tree is loaded: its entries make no cycles, and
    with a million of them alive every collection would walk them all (4x the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sort_key(path: str) -> tuple[str, ...]:
    """Depth first, each folder's children in name order: the order entries are stored in."""
    return tuple(path.split("/")) if path else ()


def encode_lines(entries: list[Entry]) -> bytes:
    return b"".join(entry.to_line() for entry in entries)


def decode_lines(data: bytes) -> list[Entry]:
    """The entries of one tree blob; IntegrityError when it is not what trees writes."""
    # One json.loads for the whole blob (a JSON string never holds a raw newline, so the line
    # breaks are safe to turn into commas): several times faster than a call per line.
    body = data.rstrip(b"\n")
    try:
        items = json.loads(b"[" + body.replace(b"\n", b",") + b"]") if body else []
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(f"a tree blob is not JSON lines ({exc})") from None
    return [decode(item) for item in items]


def decode(item: object) -> Entry:
    # Straight-line checks: a restore decodes every entry of the tree before it makes anything,
    # a million of them for a big volume, so each costs a few microseconds at most.
    if type(item) is not dict:
        raise damaged("a tree entry is not an object")
    path, kind, mode = item.get("p"), item.get("t"), item.get("m")
    uid, gid, mtime = item.get("u"), item.get("g"), item.get("T")
    size, link = item.get("s", 0), item.get("l", "")
    if not (
        type(path) is str
        and kind in TYPES
        and type(mode) is int
        and 0 <= mode < 0o10000
        and type(uid) is int
        and 0 <= uid < _MAX_ID
        and type(gid) is int
        and 0 <= gid < _MAX_ID
        and type(mtime) is int
        and -_MAX_SIZE < mtime < _MAX_SIZE
        and type(size) is int
        and 0 <= size < _MAX_SIZE
        and type(link) is str
    ):
        raise damaged(f"a tree entry has a missing or bad field: {_short(item)}")
    entry = Entry(path, kind, mode, uid, gid, mtime, size, link=link)
    if kind == FILE:
        if size or "c" in item or "x" in item:
            _content(entry, item)
    elif size or "c" in item or "x" in item:
        raise damaged(f"tree entry {path!r} is not a file but has data")
    if (kind in (SYMLINK, HARDLINK)) != bool(link):
        raise damaged(f"tree entry {path!r} has a link target where it cannot, or lacks one")
    return entry


def _content(entry: Entry, item: dict[str, Any]) -> None:
    chunks, lengths = item.get("c", []), item.get("n", [])
    if type(chunks) is not list or type(lengths) is not list or len(chunks) != len(lengths):
        raise damaged(f"tree entry {entry.path!r} has a bad chunk list")
    try:
        entry.chunks = [bytes.fromhex(chunk) for chunk in chunks]
    except (TypeError, ValueError):
        raise damaged(f"tree entry {entry.path!r} has a chunk id that is not hex") from None
    for chunk, length in zip(entry.chunks, lengths, strict=True):
        if len(chunk) != ID_BYTES or type(length) is not int or not 0 < length < _MAX_SIZE:
            raise damaged(f"tree entry {entry.path!r} has a bad chunk id or size")
    entry.lengths = lengths
    if "x" in item:
        entry.pieces = _pieces(entry, item["x"])
        stored = sum(length for _, length in entry.pieces)
    else:
        stored = entry.size
    if sum(lengths) != stored:
        raise damaged(
            f"tree entry {entry.path!r}: its chunks hold {sum(lengths)} bytes, not {stored}"
        )


def _pieces(entry: Entry, raw: object) -> list[tuple[int, int]]:
    """A data map must run forward inside the file, without overlaps."""
    if not isinstance(raw, list):
        raise damaged(f"tree entry {entry.path!r} has a bad data map")
    pieces: list[tuple[int, int]] = []
    end = 0
    for piece in raw:
        if (
            not isinstance(piece, list)
            or len(piece) != 2
            or not all(type(value) is int for value in piece)
            or piece[0] < end
            or piece[1] < 0
            or piece[0] + piece[1] > entry.size
        ):
            raise damaged(f"tree entry {entry.path!r} has a bad data map")
        end = piece[0] + piece[1]
        pieces.append((piece[0], piece[1]))
    return pieces


def _short(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 120 else text[:117] + "..."


def damaged(why: str) -> IntegrityError:
    return IntegrityError(
        f"the snapshot's file tree is damaged: {why}",
        hint="restore another snapshot; 'safehold verify' checks the chunk store",
    )
