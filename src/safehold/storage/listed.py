"""A repository read from one listing: the keys and sizes of one recursive listing of an S3
prefix, with the bodies read from the bucket on demand. For the readers that look at many
repositories at once (``status --fleet``): a catalog scan asks for each artifact's size, and a
status asks for records that may not exist; here both are answered from the listing, so a
repository costs one listing (paged) plus a GET per manifest or record it really holds.

The view is read-only: writing or deleting through it is an error, so a reader built on it can
never change what it reads.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import StorageError

if TYPE_CHECKING:
    from .base import Storage, Writer
    from .s3 import S3Storage


class ListedStorage:
    """``source``'s keys as ``sizes`` lists them (repository-relative key -> bytes)."""

    def __init__(self, source: Storage, sizes: dict[str, int]) -> None:
        self.source = source
        self.sizes = sizes

    @property
    def description(self) -> str:
        return self.source.description

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys directly under ``prefix`` (one level, as ``Storage.list``), sorted."""
        folder = prefix.strip("/")
        base = f"{folder}/" if folder else ""
        return sorted(k for k in self.sizes if k.startswith(base) and "/" not in k[len(base) :])

    def size(self, key: str) -> int:
        try:
            return self.sizes[key]
        except KeyError:
            raise FileNotFoundError(2, "not in the listing", key) from None

    def exists(self, key: str) -> bool:
        return key in self.sizes

    def open_reader(self, key: str) -> IO[bytes]:
        self.size(key)  # a key the listing lacks costs no request
        return self.source.open_reader(key)

    def read_bytes(self, key: str) -> bytes:
        self.size(key)
        return self.source.read_bytes(key)

    def local_path(self, key: str) -> Path | None:
        return None

    def open_writer(self, key: str) -> Writer:
        raise self._read_only(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        raise self._read_only(key)

    def delete(self, key: str) -> None:
        raise self._read_only(key)

    def _read_only(self, key: str) -> StorageError:
        return StorageError(
            f"{self.description} is opened read-only here: {key} is not written",
            hint="this command only reads; a bug if you see this",
        )


def s3_tree(storage: S3Storage, marker: str | None = None) -> dict[str, int] | None:
    """Every key under ``storage``'s prefix with its size, from one recursive listing (paged).
    ``marker``: a key prefix the repository must hold (``.safehold/``); ``None`` is returned
    without listing the rest once the sorted listing has passed where it would be: a foreign
    folder of a million photos costs one page."""
    root = f"{storage.prefix}/" if storage.prefix else ""
    sizes: dict[str, int] = {}
    found = marker is None
    for page in storage.pages(root, recursive=True):
        for item in page.get("Contents", []):
            key = item["Key"][len(root) :]
            if key and not key.endswith("/"):
                sizes[key] = int(item["Size"])
                found = found or (marker is not None and key.startswith(marker))
        # S3 lists in UTF-8 byte order, which is code point order: past the marker, none left.
        if not found and marker is not None and sizes and max(sizes) > marker:
            return None
    return sizes if found else None


def s3_folders(storage: S3Storage, parent: str) -> builtins.list[str]:
    """The folder names directly under ``parent`` (a prefix in ``storage``'s bucket, "" for
    the bucket's top level), sorted: one delimited listing, paged."""
    base = f"{parent.strip('/')}/" if parent.strip("/") else ""
    names: builtins.list[str] = []
    for page in storage.pages(base):
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"][len(base) :].strip("/")
            if name:
                names.append(name)
    return sorted(names)
