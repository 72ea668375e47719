"""Streaming compression: multi-threaded zstd (python-zstandard) and pigz-style gzip (ISA-L)."""

from .gzip import (
    DEFAULT_GZIP_LEVEL,
    SUFFIXES,
    GzipWriter,
    open_compressor,
    open_decompressor,
)
from .zstd import ZstdError, ZstdWriter, zstd_reader

__all__ = [
    "DEFAULT_GZIP_LEVEL",
    "SUFFIXES",
    "GzipWriter",
    "ZstdError",
    "ZstdWriter",
    "open_compressor",
    "open_decompressor",
    "zstd_reader",
]
