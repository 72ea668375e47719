"""What a file handed to ``restore --database`` is, told from its content, never its name.

Operators arrive with the dumps their own scripts wrote: pg_dump custom, tar, directory or plain
SQL, often gzip- or zstd-compressed. ``identify`` reads the first bytes (decompressing the head
of a wrapped file) and says which of these it is, or refuses it with a message saying what it is
instead (a volume backup, an empty file, a cluster dump...), before anything is changed.
Restoring a plain dump streams it through ``sql_chunks`` into psql; the others go to pg_restore.
"""

from __future__ import annotations

import codecs
import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import zstandard
from isal import igzip_lib

from ...compress import ZstdError, open_decompressor
from ...crypto import is_age
from ...errors import IntegrityError, UsageError
from ...model import ByteSource
from .._pipeline import Progress

Format = Literal["custom", "tar", "directory", "plain"]
Compression = Literal["gzip", "zstd"]

HEAD = 64 * 1024  # pg_dump --create and pg_dumpall say what they are well within this
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# What a damaged gzip or zstd stream raises while being read.
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (
    ZstdError,
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    cast("type[Exception]", igzip_lib.IsalError),  # typed as an instance in isal's stubs
)
DAMAGED: tuple[type[Exception], ...] = (IntegrityError, *DECOMPRESS_ERRORS)  # age damage too
_PG_DUMP_PLAIN = b"-- PostgreSQL database dump"
_PG_DUMP_DONE = b"PostgreSQL database dump complete"
_SQL_START = re.compile(
    r"(--|/\*|\\|SET\b|CREATE\b|BEGIN\b|START\b|SELECT\b|INSERT\b|COPY\b|ALTER\b|DROP\b"
    r"|COMMENT\b|GRANT\b|REVOKE\b|DO\b|UPDATE\b|DELETE\b|TRUNCATE\b)",
    re.IGNORECASE,
)
_OWN_DATABASE = re.compile(rb"^(?:\\connect\b|\\c\s|CREATE DATABASE\b)", re.MULTILINE)
_OTHER_ARCHIVES = {  # magic -> what it is (formats safehold does not unwrap)
    b"BZh": "a bzip2-compressed file: decompress it first (bunzip2)",
    b"\xfd7zXZ\x00": "an xz-compressed file: decompress it first (unxz)",
    b"PK\x03\x04": "a zip archive: unzip it first",
    b"\x04\x22\x4d\x18": "an lz4-compressed file: decompress it first (lz4 -d)",
}


@dataclass(frozen=True)
class DumpInput:
    """A file or folder ``restore --database`` can take."""

    format: Format
    compression: Compression | None = None
    encrypted: bool = False  # age: the content is known only after decryption
    pg_dump_plain: bool = False  # plain SQL that pg_dump wrote: it ends with a marker

    def describe(self) -> str:
        what = {
            "custom": "pg_dump custom format (-Fc)",
            "tar": "pg_dump tar format (-Ft)",
            "directory": "pg_dump directory format (-Fd)",
            "plain": "plain SQL",
        }[self.format]
        return f"{what}, {self.compression}-compressed" if self.compression else what


def identify(path: Path) -> DumpInput:
    """Which dump ``path`` is; a ``UsageError``/``IntegrityError`` naming what it is otherwise."""
    name = path.name or str(path)
    if path.is_dir():
        toc = path / "toc.dat"
        if toc.is_file() and toc.read_bytes()[:5] == b"PGDMP":
            return DumpInput("directory")
        raise UsageError(
            f"{path} is a folder without a pg_dump toc.dat: not a directory-format dump",
            hint="pass the folder pg_dump -Fd wrote (it holds toc.dat and NNNN.dat files)",
        )
    with path.open("rb") as fh:
        head = fh.read(HEAD)
    if is_age(head[:64]):
        return DumpInput("custom", encrypted=True)
    compression: Compression | None = None
    if head[:2] == GZIP_MAGIC:
        compression = "gzip"
    elif head[:4] == ZSTD_MAGIC:
        compression = "zstd"
    if compression is not None:
        head = _inner_head(path, compression, name)
    return _classify(head, compression, name)


def _inner_head(path: Path, compression: Compression, name: str) -> bytes:
    try:
        with path.open("rb") as fh:
            inner, head = opened(fh, compression), b""
            while len(head) < HEAD and (part := inner.read(HEAD - len(head))):
                head += part
            return head
    except DECOMPRESS_ERRORS as exc:
        raise IntegrityError(
            f"{name} is a damaged {compression} file: {exc}",
            hint="restore an older backup, or check how the file was copied",
        ) from None


def _classify(head: bytes, compression: Compression | None, name: str) -> DumpInput:
    wrapped = f"a {compression}-compressed " if compression else "a "
    if not head:
        what = f"{wrapped}empty stream" if compression else "an empty file"
        raise IntegrityError(
            f"{name} is {what}: there is nothing to restore",
            hint="the backup job that wrote it failed; restore an older backup",
        )
    if head[:5] == b"PGDMP":
        return DumpInput("custom", compression)
    if head[257:262] == b"ustar":
        if head[:100].split(b"\0")[0] == b"toc.dat":  # pg_dump -Ft writes it first
            return DumpInput("tar", compression)
        raise UsageError(
            f"{name} is {wrapped}tar archive of files, not a database dump — a volume backup?",
            hint="restore volumes with --volume NAME:FILE",
        )
    if is_age(head[:64]):
        raise UsageError(
            f"{name} is an age-encrypted file inside {compression} compression",
            hint="decompress it, then restore the .age file with the identity configured",
        )
    for magic, what in _OTHER_ARCHIVES.items():
        if head.startswith(magic):
            raise UsageError(f"{name} is {what}", hint="then restore the file it holds")
    text = _text(head)
    if text is None:
        raise IntegrityError(
            f"{name} is {wrapped[2:]}binary data, not a PostgreSQL dump",
            hint="restore --database takes pg_dump output (custom, tar, directory or plain "
            "SQL), optionally gzip- or zstd-compressed",
        )
    if "PostgreSQL database cluster dump" in text:
        raise UsageError(
            f"{name} is a pg_dumpall output: roles and every database of a cluster, "
            "which would not go into one staging database",
            hint="restore it on a new server with 'psql -f FILE postgres' as a superuser, or "
            "dump the one database with pg_dump",
        )
    if _OWN_DATABASE.search(head):
        raise UsageError(
            f"{name} is plain SQL that creates or connects to its own database "
            "(pg_dump --create, or \\connect): it would write outside the staging database",
            hint="dump it again without --create/-C, or remove its CREATE DATABASE and "
            "\\connect lines",
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not _SQL_START.match(first):
        begins = first[:40]
        raise IntegrityError(
            f"{name} is {wrapped}text file that does not look like SQL (it begins {begins!r})",
            hint="restore --database takes pg_dump output (custom, tar, directory or plain SQL)",
        )
    return DumpInput("plain", compression, pg_dump_plain=head.startswith(b"--\n" + _PG_DUMP_PLAIN))


def _text(head: bytes) -> str | None:
    """The head as text, or None for binary data (a cut multi-byte character is fine)."""
    if b"\0" in head:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = head.decode("latin-1")  # SQL_ASCII/LATIN1 databases dump non-UTF-8 text
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    return None if controls * 100 > len(text) else text


def opened(raw: ByteSource, compression: str | None) -> ByteSource:
    """``raw`` decompressed (or as it is); a damaged stream raises one of DECOMPRESS_ERRORS."""
    return open_decompressor(compression or "none", raw)


def _whole_zstd_frames(raw: ByteSource) -> Iterator[bytes]:
    """zstd frames, decompressed; a frame cut short raises (python-zstandard's stream reader
    just ends there, and psql would commit the statements read so far)."""
    context = zstandard.ZstdDecompressor()
    frame, fed = context.decompressobj(), False
    while data := raw.read(CHUNK // 8):  # SQL compresses ~10x: bounded output per call
        while data:
            fed = True
            if out := frame.decompress(data):
                yield out
            data = b""
            if frame.eof:  # the next frame (zstd -T, or files concatenated) starts here
                data, frame, fed = frame.unused_data, context.decompressobj(), False
    if fed and not frame.eof:
        raise EOFError("the last zstd frame is cut short")


def head(path: Path, size: int = 64) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


def sql_chunks(path: Path, progress: Progress | None = None) -> Iterator[bytes]:
    """A plain dump's SQL, decompressed, for psql's stdin; raises before the end of the stream
    when the file is damaged or cut short, so the caller can stop psql before it commits."""
    name, dump = path.name, identify(path)
    tail = b""
    with path.open("rb") as raw:
        if dump.compression == "zstd":
            chunks = _whole_zstd_frames(raw)
        else:
            sql_in = opened(raw, dump.compression)
            chunks = iter(lambda: sql_in.read(CHUNK), b"")
        try:
            for chunk in chunks:
                tail = (tail + chunk)[-4096:]
                if progress is not None:
                    progress.advance(raw.tell() - progress.done)  # compressed bytes read
                yield chunk
        except DECOMPRESS_ERRORS as exc:
            raise IntegrityError(
                f"{name} is a damaged {dump.compression} file: {exc}",
                hint="restore an older backup, or check how the file was copied",
            ) from None
    if dump.pg_dump_plain and _PG_DUMP_DONE not in tail:
        raise IntegrityError(
            f"{name} is cut short: pg_dump's closing line ('{_PG_DUMP_DONE.decode()}') is missing",
            hint="the dump was interrupted or truncated; restore an older backup",
        )
