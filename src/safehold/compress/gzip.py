"""Parallel gzip (python-isal / ISA-L), and one place to pick a stream compressor by name.

``GzipWriter`` works like pigz: the input is cut into 1 MiB blocks, each deflated on a worker
thread (ISA-L releases the GIL) primed with the previous block's last 32 KiB as dictionary and
ended with a sync flush, so the blocks concatenate into ONE ordinary gzip member whose CRC is
combined from the blocks'. Any gzip reader (``tar -tzf``, ``gzip -t``, zcat) reads it. Blocks
in flight are bounded (two per worker), so memory stays a few MiB whatever the input size.
Compressed blocks are written to the sink on the caller's thread, in order, so a sink error
(disk full) is raised where the caller can handle it.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from isal import igzip, isal_zlib

from ..model import ByteSink, ByteSource
from .zstd import ZstdWriter, zstd_reader

BLOCK = 1 << 20
WINDOW = 1 << 15  # deflate's window: the most a dictionary can help
# ISA-L levels are 0..3. Measured on bench/bench_tree.py's data: level 2 is as fast as 1 and
# stays within 7% of gzip -6 even on plain text (level 1: +10%); level 3 is half as fast.
DEFAULT_GZIP_LEVEL = 2
# Magic, deflate, no flags, mtime 0 (reproducible output), no extra flags, OS = Unix.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed Huffman codes ends the deflate stream
KINDS = ("gzip", "zstd", "none")
SUFFIXES = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}


class StreamCompressor(Protocol):
    def write(self, data: bytes | memoryview) -> int: ...

    def finish(self) -> None: ...


def _deflate(block: bytes, zdict: bytes, level: int) -> tuple[bytes, int]:
    if zdict:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=zdict)
    else:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    data = compressor.compress(block) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)
    return data, isal_zlib.crc32(block)


class GzipWriter:
    """Compresses what is written into one gzip member in ``sink``; ``finish()`` ends it."""

    def __init__(self, sink: ByteSink, level: int = DEFAULT_GZIP_LEVEL, threads: int = 0) -> None:
        self._sink = sink
        self._level = level
        self._threads = threads if threads > 0 else len(os.sched_getaffinity(0))
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="safehold-gzip")
        self._pending: deque[tuple[Future[tuple[bytes, int]], int]] = deque()
        self._buffer = bytearray()
        self._dict = b""
        self._crc = 0
        self._size = 0
        sink.write(GZIP_HEADER)

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        if self._buffer:
            take = min(total, BLOCK - len(self._buffer))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == BLOCK:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
        while len(view) >= BLOCK:
            self._submit(bytes(view[:BLOCK]))
            view = view[BLOCK:]
        self._buffer += view
        return total

    def finish(self) -> None:
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._write_oldest()
            self._sink.write(FINAL_BLOCK + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop the workers without finishing the stream (the caller discards the output)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, block: bytes) -> None:
        zdict, self._dict = self._dict, block[-WINDOW:]
        self._pending.append((self._pool.submit(_deflate, block, zdict, self._level), len(block)))
        while len(self._pending) > 2 * self._threads:
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, length = self._pending.popleft()
        data, crc = future.result()
        self._crc = isal_zlib.crc32_combine(self._crc, crc, length)
        self._size += length
        self._sink.write(data)


class _Plain:
    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> int:
        return self._sink.write(data)

    def finish(self) -> None:
        return None


def open_compressor(
    kind: str, sink: ByteSink, *, level: int | None = None, threads: int = 0
) -> StreamCompressor:
    """``gzip`` (ISA-L, parallel), ``zstd`` (python-zstandard) or ``none`` over ``sink``."""
    if kind == "gzip":
        return GzipWriter(sink, DEFAULT_GZIP_LEVEL if level is None else level, threads)
    if kind == "zstd":
        return ZstdWriter(sink, 3 if level is None else level, threads)
    if kind == "none":
        return _Plain(sink)
    raise ValueError(f"unknown compression {kind!r}; use one of {', '.join(KINDS)}")


def open_decompressor(kind: str, source: ByteSource) -> ByteSource:
    """A read stream of the decompressed bytes; damage shows up as an exception from read."""
    if kind == "gzip":
        reader: ByteSource = igzip.IGzipFile(fileobj=source, mode="rb")  # type: ignore[no-untyped-call]
        return reader
    if kind == "zstd":
        return zstd_reader(source)
    if kind == "none":
        return source
    raise ValueError(f"unknown compression {kind!r}; use one of {', '.join(KINDS)}")
