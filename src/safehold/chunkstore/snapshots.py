"""Snapshot objects: the commit point of a backup, one object each, written last.

``u32 little-endian len(header) + header + body``. The header is sealed with the meta key
(host readable: id, time, host, target, kind, stats, every blob id the snapshot needs, the
body's hash); the body is age-encrypted to the recipients (zstd JSON: root tree ids or a
stream's chunk list, file names), so only the identity reads what was backed up. The body's
hash in the header binds the two: a body moved from another snapshot is refused.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import blake3
import zstandard

from ..crypto import DecryptionKey, EncryptionKey, open_age, seal_age
from ..errors import IntegrityError, UsageError
from ..model import parse_time
from ..storage.base import Storage
from .layout import SNAPSHOTS, basename, is_snapshot_id, snapshot_key
from .localcache import read_cached, write_private
from .packs import no_identity
from .sealed import seal, unseal

READERS = 8
ID_BYTES = 32


@dataclass(frozen=True)
class SnapshotInfo:
    """What the backup host can read about a snapshot (its header)."""

    id: str
    time: datetime
    host: str
    target: str
    kind: str  # "tree" | "stream"
    stats: dict[str, int] = field(default_factory=dict)
    blobs: int = 0  # how many blob ids it needs
    # Taken as one member of a group (a full-system set): its id, how many members it has,
    # and this member's role there; the group is whole once that many members exist.
    group: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return snapshot_key(self.id)


# A header's refs are the first REF_BYTES of each blob id: what prune needs to keep every blob
# a snapshot names (two ids sharing a prefix only keep an unneeded blob a while longer), at a
# quarter of the header's size -- a large tree names tens of thousands of blobs in every
# snapshot, and the header is what each backup adds even when nothing changed.
REF_BYTES = 8


def ref_of(blob_id: bytes) -> bytes:
    return blob_id[:REF_BYTES]


def pack_refs(refs: Iterable[bytes]) -> str:
    return base64.b64encode(b"".join(sorted({ref_of(r) for r in refs}))).decode()


def unpack_refs(text: str, size: int = REF_BYTES) -> list[bytes]:
    """The refs as ``ref_of`` gives them (headers written with whole ids, ``size`` 32, too)."""
    raw = base64.b64decode(text)
    return [raw[i : i + size][:REF_BYTES] for i in range(0, len(raw), size)]


def encrypt_body(body: dict[str, Any], encryption: EncryptionKey) -> bytes:
    plain = zstandard.ZstdCompressor(level=3).compress(json.dumps(body).encode())
    return seal_age(plain, encryption)


def encode(meta_key: bytes, info: SnapshotInfo, refs: Iterable[bytes], body: bytes) -> bytes:
    header = {
        "id": info.id,
        "time": info.time.isoformat(),
        "host": info.host,
        "target": info.target,
        "kind": info.kind,
        "stats": info.stats,
        "refs": pack_refs(refs),
        "ref_bytes": REF_BYTES,
        **({"group": info.group} if info.group else {}),
        "body_hash": blake3.blake3(body).hexdigest(),
    }
    sealed = seal(meta_key, info.key, header)
    return len(sealed).to_bytes(4, "little") + sealed + body


def _split(data: bytes, key: str) -> tuple[bytes, bytes]:
    size = int.from_bytes(data[:4], "little")
    if len(data) < 4 + size:
        raise IntegrityError(f"snapshot {key} is truncated", hint="run verify")
    return data[4 : 4 + size], data[4 + size :]


def _info(header: dict[str, Any], snapshot_id: str) -> SnapshotInfo:
    try:
        if header["id"] != snapshot_id:
            raise ValueError(f"it names itself {header['id']!r}")
        return SnapshotInfo(
            id=snapshot_id,
            time=parse_time(header["time"]),
            host=str(header["host"]),
            target=str(header["target"]),
            kind=str(header["kind"]),
            stats={str(k): int(v) for k, v in header["stats"].items()},
            blobs=len(base64.b64decode(header["refs"])) // int(header.get("ref_bytes", ID_BYTES)),
            group=_group(header.get("group")),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"snapshot {snapshot_id} has a malformed header ({exc})") from None


def _group(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and type(value.get("members")) is int
        and isinstance(value.get("role"), str)
    ):
        raise ValueError("its group is not {id, members, role}")
    group = {"id": value["id"], "members": value["members"], "role": value["role"]}
    if isinstance(value.get("source"), str):  # where a folder member was taken from
        group["source"] = value["source"]
    return group


def list_snapshot_ids(storage: Storage) -> list[str]:
    return [n for n in (basename(k) for k in storage.list(SNAPSHOTS)) if is_snapshot_id(n)]


class SnapshotReader:
    """Reads snapshot headers (cached on disk when ``cache_dir`` is given: they never change)."""

    def __init__(self, storage: Storage, meta_key: bytes, cache_dir: Path | None) -> None:
        self.storage = storage
        self.meta_key = meta_key
        self.cache = Path(cache_dir) / "snapshots" if cache_dir is not None else None

    def ids(self) -> list[str]:
        return list_snapshot_ids(self.storage)

    def header(self, snapshot_id: str) -> dict[str, Any]:
        cached = self._cached(snapshot_id)
        if cached is not None:
            return cached
        key = snapshot_key(snapshot_id)
        head, _body = _split(self._read(snapshot_id), key)
        header = unseal(self.meta_key, key, head)
        if not isinstance(header, dict):
            raise IntegrityError(f"snapshot {snapshot_id} has a malformed header")
        self._remember(snapshot_id, header)
        return header

    def info(self, snapshot_id: str) -> SnapshotInfo:
        return _info(self.header(snapshot_id), snapshot_id)

    def refs(self, snapshot_id: str) -> list[bytes]:
        header = self.header(snapshot_id)
        return unpack_refs(str(header["refs"]), int(header.get("ref_bytes", ID_BYTES)))

    def all(self) -> list[SnapshotInfo]:
        wanted = self.ids()
        self._forget_cached(set(wanted))
        with ThreadPoolExecutor(READERS, thread_name_prefix="safehold-snapshots") as pool:
            found = [i for i in pool.map(self._info_or_none, wanted) if i is not None]
        return sorted(found, key=lambda s: (s.time, s.id))

    def _info_or_none(self, snapshot_id: str) -> SnapshotInfo | None:
        try:
            return self.info(snapshot_id)
        except UsageError:
            return None  # forgotten between the listing and the read

    def body(self, snapshot_id: str, decryption: DecryptionKey | None) -> dict[str, Any]:
        if decryption is None:
            raise no_identity(f"reading snapshot {snapshot_id}'s contents")
        key = snapshot_key(snapshot_id)
        head, body = _split(self._read(snapshot_id), key)
        header = unseal(self.meta_key, key, head)
        if blake3.blake3(body).hexdigest() != header.get("body_hash"):
            raise IntegrityError(
                f"snapshot {snapshot_id}'s body does not match its header",
                hint="the object was altered; restore another snapshot",
            )
        plain = open_age(body, decryption)
        value = json.loads(zstandard.ZstdDecompressor().decompress(plain))
        if not isinstance(value, dict):
            raise IntegrityError(f"snapshot {snapshot_id}'s body is malformed")
        return value

    def _read(self, snapshot_id: str) -> bytes:
        if not is_snapshot_id(snapshot_id):
            raise UsageError(f"{snapshot_id!r} is not a snapshot id (YYYYMMDDTHHMMSSZ-16hex)")
        try:
            return self.storage.read_bytes(snapshot_key(snapshot_id))
        except FileNotFoundError:
            raise UsageError(
                f"no snapshot {snapshot_id} in this chunk store",
                hint="list the snapshots to see which exist",
            ) from None

    def _cached(self, snapshot_id: str) -> dict[str, Any] | None:
        raw = read_cached(self.cache / snapshot_id) if self.cache is not None else None
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _forget_cached(self, present: set[str]) -> None:
        """Drop the cached headers of snapshots that are gone (forgotten)."""
        if self.cache is None or not self.cache.is_dir():
            return
        for path in self.cache.iterdir():
            if is_snapshot_id(path.name) and path.name not in present:
                path.unlink(missing_ok=True)

    def _remember(self, snapshot_id: str, header: dict[str, Any]) -> None:
        if self.cache is not None:
            write_private(self.cache / snapshot_id, json.dumps(header).encode())
