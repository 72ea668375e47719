"""Streaming zstd, multi-threaded, in bounded memory (python-zstandard over libzstd)."""

from __future__ import annotations

import os

import zstandard

from ..model import ByteSink, ByteSource

DEFAULT_LEVEL = 3
READ_SIZE = 1 << 20


class _SinkAdapter:
    """python-zstandard wants a file-like object; this forwards to any ``write``-able sink."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        return None


class ZstdWriter:
    """Compresses what is written to it into ``sink``; ``finish()`` ends the frame."""

    def __init__(self, sink: ByteSink, level: int = DEFAULT_LEVEL, threads: int = 0) -> None:
        workers = threads if threads > 0 else (os.cpu_count() or 1)
        compressor = zstandard.ZstdCompressor(level=level, threads=workers)
        self._stream = compressor.stream_writer(
            _SinkAdapter(sink),  # type: ignore[arg-type]
            closefd=False,
            write_return_read=True,
        )

    def write(self, data: bytes | memoryview) -> int:
        return int(self._stream.write(data))

    def finish(self) -> None:
        self._stream.flush(zstandard.FLUSH_FRAME)
        self._stream.close()  # type: ignore[no-untyped-call]


def zstd_reader(source: ByteSource) -> zstandard.ZstdDecompressionReader:
    """Decompressing read stream; a damaged stream raises ``zstandard.ZstdError``."""
    return zstandard.ZstdDecompressor().stream_reader(
        source,  # type: ignore[arg-type]
        read_size=READ_SIZE,
        read_across_frames=True,
        closefd=False,
    )


ZstdError = zstandard.ZstdError
