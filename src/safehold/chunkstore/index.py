"""The index: which pack holds each blob, merged from every ``chunks/index/*`` object.

Each writer adds one index object for the packs it made (after they are committed, before its
snapshot). Prune writes one object that lists every pack it keeps and names the objects it
replaces in ``supersedes``: from then on a reader ignores those, so an old index naming a
deleted pack is harmless even when the bucket refuses to delete it (Object Lock) or prune dies
before it gets there. A blob may be in several packs (two writers at once); any copy will do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from ..errors import IntegrityError
from ..storage.base import Storage
from .layout import INDEX, basename, index_key, is_name, new_name
from .localcache import read_cached, write_private
from .packs import Entry, entry_from_row, entry_row
from .sealed import seal, unseal

READERS = 8  # index objects fetched at once


@dataclass
class Index:
    """Blob locations: ``where[id] = (pack, entry)``; ``packs[pack] = entries``."""

    names: frozenset[str] = frozenset()  # the active index objects this was built from
    superseded: frozenset[str] = frozenset()  # index objects an active one replaces
    packs: dict[str, list[Entry]] = field(default_factory=dict)
    where: dict[bytes, tuple[str, Entry]] = field(default_factory=dict)

    def add(self, pack: str, entries: list[Entry]) -> None:
        self.packs[pack] = entries
        for entry in entries:
            self.where.setdefault(entry[0], (pack, entry))

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self.where

    def locate(self, chunk_id: bytes) -> tuple[str, Entry]:
        try:
            return self.where[chunk_id]
        except KeyError:
            raise IntegrityError(
                f"blob {chunk_id.hex()[:16]} is in no index",
                hint="the store lost data or the snapshot is damaged; run verify",
            ) from None


def encode(packs: dict[str, list[Entry]], supersedes: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "supersedes": sorted(supersedes),
        "packs": {name: [entry_row(e) for e in entries] for name, entries in packs.items()},
    }


def _decode_packs(raw: dict[str, Any], where: str) -> dict[str, list[Entry]]:
    try:
        return {str(name): [entry_from_row(r) for r in rows] for name, rows in raw.items()}
    except (ValueError, TypeError, IndexError) as exc:
        raise IntegrityError(f"index object {where} is malformed ({exc})") from None


def write_index(
    storage: Storage, meta_key: bytes, packs: dict[str, list[Entry]], supersedes: Iterable[str] = ()
) -> str:
    """A new index object for ``packs``; returns its name."""
    name = new_name()
    key = index_key(name)
    storage.put_bytes(key, seal(meta_key, key, encode(packs, supersedes)))
    return name


def list_index_names(storage: Storage) -> list[str]:
    return [n for n in (basename(k) for k in storage.list(INDEX)) if is_name(n)]


def read_index_object(storage: Storage, meta_key: bytes, name: str) -> dict[str, Any]:
    """One index object's content: ``packs`` decoded, ``supersedes`` as a list."""
    key = index_key(name)
    value = unseal(meta_key, key, storage.read_bytes(key))
    if not isinstance(value, dict) or not isinstance(value.get("packs"), dict):
        raise IntegrityError(f"index object {key} is malformed")
    return {
        "packs": _decode_packs(value["packs"], key),
        "supersedes": [str(s) for s in value.get("supersedes", [])],
    }


def load_index(storage: Storage, meta_key: bytes, cache_dir: Path | None = None) -> Index:
    """The merged index; from ``cache_dir`` when it was built from the same index objects."""
    names = frozenset(list_index_names(storage))
    cache = Path(cache_dir) / "index.zst" if cache_dir is not None else None
    if cache is not None:
        cached = _read_cache(cache, names)
        if cached is not None:
            return cached
    index = merge(names, _read_all(storage, meta_key, sorted(names)))
    if cache is not None:
        _write_cache(cache, index)
    return index


def merge(names: frozenset[str], objects: dict[str, dict[str, Any]]) -> Index:
    """The index that the objects read (``names`` were listed) give: the superseded left out."""
    superseded = frozenset(s for obj in objects.values() for s in obj["supersedes"])
    index = Index(names=names, superseded=superseded)
    for name in sorted(objects.keys() - superseded):
        for pack, entries in objects[name]["packs"].items():
            index.add(pack, entries)
    return index


def _read_all(storage: Storage, meta_key: bytes, names: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(READERS, thread_name_prefix="safehold-index") as pool:
        results = pool.map(lambda n: _read_or_none(storage, meta_key, n), names)
        for name, value in zip(names, results, strict=True):
            if value is not None:
                found[name] = value
    return found


def _read_or_none(storage: Storage, meta_key: bytes, name: str) -> dict[str, Any] | None:
    try:
        return read_index_object(storage, meta_key, name)
    except FileNotFoundError:
        return None  # deleted by a prune between the listing and the read: superseded anyway


def _read_cache(path: Path, names: frozenset[str]) -> Index | None:
    raw = read_cached(path)
    if raw is None:
        return None
    try:
        data = json.loads(zstandard.ZstdDecompressor().decompress(raw))
        if frozenset(data["names"]) != names:
            return None
        index = Index(names=names, superseded=frozenset(data["superseded"]))
        for pack, entries in _decode_packs(data["packs"], str(path)).items():
            index.add(pack, entries)
        return index
    except (ValueError, KeyError, TypeError, IntegrityError, zstandard.ZstdError):
        return None  # no cache or a damaged one: rebuilt from the bucket


def _write_cache(path: Path, index: Index) -> None:
    data = encode(index.packs)
    data.update(names=sorted(index.names), superseded=sorted(index.superseded))
    write_private(path, zstandard.ZstdCompressor(level=1).compress(json.dumps(data).encode()))
