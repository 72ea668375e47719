"""The files cache: which chunks each file of a target had last time, so an unchanged file is
not read again (restic's parent-snapshot trick).

Restic finds a file's chunks in the previous snapshot's tree; here the backup host cannot read
old trees (they are encrypted to recipients it has no identity for), so the host keeps its own
note, one file per store and target in ``cache_dir``: path -> size, mtime_ns, ctime_ns, inode,
chunk ids and lengths, data map. A file whose lstat matches all four is taken as unchanged;
ctime is set by the kernel on every change (a restored mtime does not fool it) and the inode
catches a file replaced by another.

It is only a shortcut, never trusted for content: the writer must confirm every id is still in
the store's index (``reuse``) or the file is read again; a missing or damaged note is no note.
A file changed in the second before it was read could change again within the same timestamp
tick, so such files are not noted. The note is replaced after each committed backup, so it
holds exactly the last snapshot's files. It holds file names in clear, like the folder it
describes, readable only by its owner (0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import zstandard

_FORMAT = 1
_RECENT_NS = 1_000_000_000  # younger changes than this are not noted (timestamp granularity)


@dataclass(frozen=True, slots=True)
class Known:
    chunks: list[bytes]
    lengths: list[int]
    pieces: list[tuple[int, int]] | None


class FilesCache:
    def __init__(self, path: Path | None, started_ns: int) -> None:
        self._path = path
        self._old: dict[str, list[Any]] = _load(path) if path is not None else {}
        self._new: dict[str, list[Any]] = {}
        self._cutoff = started_ns - _RECENT_NS

    @classmethod
    def for_target(
        cls, cache_dir: Path | None, store_id: str, target: str, started_ns: int
    ) -> FilesCache:
        if cache_dir is None:
            return cls(None, started_ns)
        # Store and target hashed: one note per pair, and any name makes a safe file name.
        key = f"{store_id}\0{target}".encode("utf-8", "surrogateescape")
        name = blake3.blake3(key).hexdigest()[:32]
        return cls(Path(cache_dir) / f"files-{name}.json.zst", started_ns)

    def lookup(self, rel: str, st: os.stat_result) -> Known | None:
        row = self._old.get(rel)
        if row is None or row[:4] != [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
            return None
        try:
            chunks = [bytes.fromhex(chunk) for chunk in row[4]]
            pieces = None if row[6] is None else [(int(a), int(b)) for a, b in row[6]]
            lengths = [int(length) for length in row[5]]
        except (TypeError, ValueError, IndexError):
            return None
        return Known(chunks, lengths, pieces)

    def note(self, rel: str, st: os.stat_result, known: Known) -> None:
        if self._path is None or max(st.st_mtime_ns, st.st_ctime_ns) >= self._cutoff:
            return
        pieces = None if known.pieces is None else [list(piece) for piece in known.pieces]
        self._new[rel] = [
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            [chunk.hex() for chunk in known.chunks],
            known.lengths,
            pieces,
        ]

    def save(self) -> None:
        """Replace the note with this backup's (call after the snapshot is committed)."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({"format": _FORMAT, "files": self._new}, separators=(",", ":"))
        packed = zstandard.ZstdCompressor(level=3).compress(data.encode("utf-8", "surrogatepass"))
        fd, temp = tempfile.mkstemp(prefix=".files-", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(packed)
            os.replace(temp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _load(path: Path) -> dict[str, list[Any]]:
    try:
        raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
        data = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (OSError, ValueError, zstandard.ZstdError):
        return {}  # no cache, or one that cannot be read: every file is read
    files = data.get("files") if isinstance(data, dict) and data.get("format") == _FORMAT else None
    return files if isinstance(files, dict) else {}
