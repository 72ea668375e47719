"""Packs: many blobs in one age-encrypted object, so a backup makes few large uploads.

Plaintext of a pack: the blobs (each a zstd-compressed chunk, level 3), then a trailer (JSON
list of ``[id_hex, kind, offset, length, raw_length]``), then the trailer's length (8 bytes,
little-endian) and ``b"SHPK1"``. The trailer makes a pack self-describing: the index can be
rebuilt from the packs by whoever holds the identity. The whole is age-encrypted to the
store's recipients, so the backup host cannot read back what it wrote.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import zstandard

from ..crypto import AgeWriter, DecryptionKey, EncryptionKey, open_age
from ..errors import DecryptionKeyError, IntegrityError
from ..storage.base import Storage, Writer
from .hostkey import HostKey
from .layout import new_name, pack_key

MAGIC = b"SHPK1"
LEVEL = 3
_TAIL = 8 + len(MAGIC)
_local = threading.local()

# (chunk id, kind, offset, length, raw length) of one blob inside a pack
Entry = tuple[bytes, str, int, int, int]


def entry_row(entry: Entry) -> list[object]:
    """An entry as JSON writes it, in a pack's trailer and in an index object."""
    return [entry[0].hex(), entry[1], entry[2], entry[3], entry[4]]


def entry_from_row(row: Any) -> Entry:
    """The entry a JSON row holds; ValueError/TypeError/IndexError when it is malformed."""
    return (bytes.fromhex(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))


@dataclass(frozen=True)
class PackDone:
    """A pack committed to storage: its name, blobs, and bytes stored."""

    name: str
    entries: list[Entry]
    stored: int


def _compressor() -> zstandard.ZstdCompressor:
    # Not thread-safe: one per worker thread, made once.
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=LEVEL)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


class _Counter:
    """Counts what goes to the storage writer (the stored size of the pack)."""

    def __init__(self, sink: Writer) -> None:
        self.sink = sink
        self.count = 0

    def write(self, data: bytes | memoryview) -> int:
        self.count += len(data)
        return self.sink.write(data)


def write_pack(
    storage: Storage, encryption: EncryptionKey, blobs: list[tuple[bytes, str, bytes]]
) -> PackDone:
    """Compress ``blobs`` (id, kind, plaintext), encrypt and upload them as one new pack.
    ``blobs`` is emptied as it goes."""
    compressor = _compressor()
    name = new_name()
    entries: list[Entry] = []
    offset = 0
    # The storage writer commits on a clean exit only: a failure leaves no object behind.
    with storage.open_writer(pack_key(name)) as writer:
        counter = _Counter(writer)
        with AgeWriter(counter, encryption) as age:
            # The list is this pack's own (the writer starts a new one): each plaintext is let
            # go once compressed, so a pack in flight holds little more than its output.
            blobs.reverse()
            while blobs:
                chunk_id, kind, raw = blobs.pop()
                packed, size = compressor.compress(raw), len(raw)
                del raw
                age.write(packed)
                entries.append((chunk_id, kind, offset, len(packed), size))
                offset += len(packed)
            trailer = json.dumps([entry_row(e) for e in entries], separators=(",", ":")).encode()
            age.write(trailer + len(trailer).to_bytes(8, "little") + MAGIC)
            age.finish()
    return PackDone(name, entries, counter.count)


def fetch_pack(storage: Storage, name: str, decryption: DecryptionKey | None) -> bytes | bytearray:
    """The authenticated plaintext of pack ``name`` (read and decrypted whole)."""
    if decryption is None:
        raise no_identity("reading pack data")
    key = pack_key(name)
    try:
        data = storage.read_bytes(key)
    except FileNotFoundError:
        raise IntegrityError(
            f"pack {key} is missing",
            hint="the store lost data (deleted outside safehold?); run verify to see which "
            "snapshots are affected",
        ) from None
    try:
        return open_age(data, decryption)
    except IntegrityError as exc:
        raise IntegrityError(f"pack {key}: {exc.message}", hint=exc.hint) from None


def read_trailer(plain: bytes | bytearray, name: str) -> list[Entry]:
    """The blob list a pack carries at its end."""
    try:
        if not plain.endswith(MAGIC) or len(plain) < _TAIL:
            raise ValueError("no pack trailer mark")
        size = int.from_bytes(plain[-_TAIL : -len(MAGIC)], "little")
        if size > len(plain) - _TAIL:
            raise ValueError("trailer length out of range")
        rows = json.loads(plain[-_TAIL - size : -_TAIL])
        return [entry_from_row(r) for r in rows]
    except (ValueError, TypeError, IndexError) as exc:
        raise IntegrityError(
            f"pack {pack_key(name)} has a damaged trailer ({exc})",
            hint="restore from another copy of the bucket; run verify",
        ) from None


def extract(plain: bytes | bytearray, name: str, entry: Entry, host_key: HostKey) -> bytes:
    """One blob's plaintext, checked against its keyed hash (its id)."""
    chunk_id, _kind, offset, length, raw_length = entry
    try:
        data = _decompressor().decompress(
            memoryview(plain)[offset : offset + length], max_output_size=raw_length
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(
            f"blob {chunk_id.hex()[:16]} in pack {pack_key(name)} does not decompress ({exc})",
            hint="the pack is damaged; run verify --read-data to find every damaged blob",
        ) from None
    if len(data) != raw_length or host_key.chunk_id(data) != chunk_id:
        raise IntegrityError(
            f"blob {chunk_id.hex()[:16]} in pack {pack_key(name)} does not match its id",
            hint="the pack is damaged or was replaced; run verify --read-data",
        )
    return data


def no_identity(doing: str) -> DecryptionKeyError:
    return DecryptionKeyError(
        f"{doing} needs the age identity: the backup host holds only the recipients",
        hint="open the store with decryption=DecryptionKey(...) (the identity file), on the "
        "restore host",
    )
