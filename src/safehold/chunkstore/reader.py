"""Blobs back out: each pack fetched and decrypted once, every blob checked against its id.

The ids asked for are grouped by the pack that holds them, packs in the order their first blob
was asked for (a stream's restore gets its first chunks first). Each pack is fetched and
decrypted whole (age authenticates the whole pack) on a worker thread (``WORKERS``, ``AHEAD``
say how many and how far ahead: memory against overlap); each blob is decompressed and its
keyed hash compared with its id, so a damaged or substituted pack is an ``IntegrityError``
naming it.

**Mirrors.** A copy of the store in another location (``snapshots copy``: the same objects
under the same names) stands in for a pack that is missing or damaged here: the blobs not yet
given are read from the first mirror whose pack passes the same checks, and ``fallback`` is
told. Blobs already given were checked one by one, so nothing given is ever taken back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..crypto import DecryptionKey
from ..errors import IntegrityError, StorageError
from ..storage.base import Storage
from .hostkey import HostKey
from .index import Index
from .packs import Entry, extract, fetch_pack, no_identity

# One pack at a time, fetched and decrypted on a worker thread (the GIL is released): a pack
# held ahead of the one being consumed cost ~50 MB of peak memory in a 2 GB tree's restore
# (a decrypted pack and the allocator's leftovers) and saved no time on local disk, where the
# writer threads are the restore's pace (bench_dedup; issue 16's 200 MB target).
WORKERS = 1
AHEAD = 0  # packs fetched and decrypted ahead of the one being consumed

Mirror = tuple[str, Storage]  # (location name, the store's copy there)
Fallback = Callable[[str, str, str], None]  # (pack, what failed here, the mirror used)


def _no_fallback(pack: str, failure: str, mirror: str) -> None:
    return None


def group_by_pack(index: Index, ids: Iterable[bytes]) -> dict[str, list[Entry]]:
    """Distinct ids grouped by their pack (in first-asked order), by offset inside each."""
    groups: dict[str, list[Entry]] = {}
    seen: set[bytes] = set()
    for cid in ids:
        if cid in seen:
            continue
        seen.add(cid)
        pack, entry = index.locate(cid)
        groups.setdefault(pack, []).append(entry)
    for entries in groups.values():
        entries.sort(key=lambda e: e[2])
    return groups


def read_blobs(
    storage: Storage,
    host_key: HostKey,
    index: Index,
    decryption: DecryptionKey | None,
    ids: Iterable[bytes],
    *,
    mirrors: Sequence[Mirror] = (),
    fallback: Fallback = _no_fallback,
) -> Iterator[tuple[bytes, bytes]]:
    """``(id, plaintext)`` for each distinct id; raises before the first fetch when an id is
    unknown or there is no identity."""
    if decryption is None:
        raise no_identity("reading backed-up data")
    groups = group_by_pack(index, ids)
    return blobs_by_pack(storage, host_key, decryption, groups, mirrors=mirrors, fallback=fallback)


def blobs_by_pack(
    storage: Storage,
    host_key: HostKey,
    decryption: DecryptionKey,
    groups: dict[str, list[Entry]],
    *,
    mirrors: Sequence[Mirror] = (),
    fallback: Fallback = _no_fallback,
) -> Iterator[tuple[bytes, bytes]]:
    """``(id, plaintext)`` of each entry of ``groups`` (pack -> its entries), pack by pack."""
    # Workers fetch and decrypt whole packs (the GIL is released); the blobs are decompressed
    # and checked here, one at a time, so memory holds a few packs, not a few packs unpacked.
    pending = iter(groups.items())
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="safehold-unpack")
    queue: deque[tuple[str, list[Entry], Future[bytes | bytearray]]] = deque()

    def ready() -> Iterator[tuple[bytes, bytes]]:
        pack, entries, fetched = queue.popleft()
        try:
            plain: bytes | bytearray | None = fetched.result()
        except (IntegrityError, StorageError) as exc:
            if not mirrors:
                raise
            plain, failure = None, exc
        for entry in entries:
            if plain is not None:
                try:
                    blob = extract(plain, pack, entry, host_key)
                except IntegrityError as exc:
                    if not mirrors:
                        raise
                    plain, failure = None, exc
                else:
                    yield entry[0], blob
                    continue
            plain = _from_mirror(pack, failure, mirrors, decryption, host_key, entry, fallback)
            yield entry[0], extract(plain, pack, entry, host_key)

    try:
        for pack, entries in pending:
            fetched = pool.submit(fetch_pack, storage, pack, decryption)
            queue.append((pack, entries, fetched))
            if len(queue) > AHEAD:
                yield from ready()
        while queue:
            yield from ready()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _from_mirror(
    pack: str,
    failure: IntegrityError | StorageError,
    mirrors: Sequence[Mirror],
    decryption: DecryptionKey,
    host_key: HostKey,
    entry: Entry,
    fallback: Fallback,
) -> bytes | bytearray:
    """The pack from the first mirror whose copy opens and holds ``entry`` intact; the failure
    here is raised (naming every mirror tried) when none does."""
    tried = []
    for name, storage in mirrors:
        try:
            plain = fetch_pack(storage, pack, decryption)
            extract(plain, pack, entry, host_key)
        except (IntegrityError, StorageError) as exc:
            tried.append(f"{name}: {exc.message}")
            continue
        fallback(pack, failure.message, name)
        return plain
    failure.message += "; no mirror has a good copy (" + "; ".join(tried) + ")"
    raise failure
