"""``ChunkStore``: the one object callers hold; it opens the store and hands out the parts.

Who can do what follows the keys it was opened with: the id key (``host_key``, or recovered
from ``chunks/keys/id-key.age`` with the identity) lists snapshots and backs up; only the age
identity (``decryption``) reads data back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..crypto import DecryptionKey, EncryptionKey, open_age, seal_age
from ..errors import ConfigError, IntegrityError, UsageError
from ..model import Event, EventSink, null_sink
from ..storage.base import Storage
from . import pins as pinning
from . import reader
from .config import StoreConfig, read_config
from .hostkey import HostKey
from .index import Index, load_index
from .layout import CONFIG, ID_KEY, is_snapshot_id, snapshot_key
from .locks import DEFAULT_TTL, StoreLock
from .prune import PruneReport, prune
from .snapshots import SnapshotInfo, SnapshotReader
from .verify import VerifyReport, verify
from .writer import ChunkStoreWriter


class ChunkStore:
    """A deduplicating, encrypted store of snapshots under ``chunks/`` of a storage."""

    def __init__(
        self,
        storage: Storage,
        config: StoreConfig,
        host_key: HostKey,
        *,
        decryption: DecryptionKey | None = None,
        cache_dir: Path | None = None,
        lock_ttl: timedelta = DEFAULT_TTL,
        mirrors: Sequence[reader.Mirror] = (),
        events: EventSink = null_sink,
        lock_wait: float = 0.0,
    ) -> None:
        self.storage = storage
        self.mirrors = tuple(mirrors)  # copies elsewhere that stand in for a bad pack here
        self.events = events
        self.config = config
        self.host_key = host_key
        self.decryption = decryption
        self.cache_dir = Path(cache_dir) / config.id_key_check[:16] if cache_dir else None
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait  # seconds a backup waits for a prune (and prune for backups)
        self.headers = SnapshotReader(storage, host_key.meta_key, self.cache_dir)

    # ---- opening ----

    @classmethod
    def init(
        cls,
        storage: Storage,
        host_key: HostKey,
        encryption: EncryptionKey,
        *,
        pack_size: int = 16 << 20,
        chunk_sizes: tuple[int, int, int] | None = None,
    ) -> ChunkStore:
        """Create the store: the id key wrapped for the recipients, then the config (last:
        a store with a config is complete)."""
        config = StoreConfig.new(host_key, encryption, pack_size, chunk_sizes)
        if storage.exists(CONFIG):
            raise UsageError(
                f"{storage.description} already holds a chunk store",
                hint="open it (ChunkStore.open) instead; a store is never initialised twice",
            )
        storage.put_bytes(ID_KEY, seal_age(host_key.id_key, encryption))
        storage.put_bytes(CONFIG, config.encode(host_key))
        return cls(storage, config, host_key)

    @classmethod
    def open(
        cls,
        storage: Storage,
        *,
        host_key: HostKey | None = None,
        decryption: DecryptionKey | None = None,
        encryption: EncryptionKey | None = None,
        cache_dir: Path | None = None,
        lock_ttl: timedelta = DEFAULT_TTL,
        mirrors: Sequence[reader.Mirror] = (),
        events: EventSink = null_sink,
        lock_wait: float = 0.0,
    ) -> ChunkStore:
        """Open with ``host_key`` (backup host) or ``decryption`` (restore host: the id key is
        recovered from the bucket), or both. ``mirrors``: (name, storage) of copies of this
        store (``snapshots copy``) a damaged or missing pack is read from instead."""
        config, mac = read_config(storage)
        if host_key is None:
            if decryption is None:
                raise UsageError(
                    "opening a chunk store needs its id key file or the age identity",
                    hint="give host_key=HostKey.load(PATH) on the backup host, or "
                    "decryption=DecryptionKey(...) to recover the id key from the bucket",
                )
            host_key = _recover_id_key(storage, decryption)
        config.check_key(host_key, mac)
        if encryption is not None and set(encryption.recipients) != set(config.recipients):
            raise ConfigError(
                "the configured recipients differ from the chunk store's",
                hint=f"the store encrypts to {', '.join(config.recipients)} (set at init); "
                "configure those, or initialise a new store for new recipients",
            )
        return cls(
            storage,
            config,
            host_key,
            decryption=decryption,
            cache_dir=cache_dir,
            lock_ttl=lock_ttl,
            mirrors=mirrors,
            events=events,
            lock_wait=lock_wait,
        )

    # ---- reading ----

    def index(self) -> Index:
        return load_index(self.storage, self.host_key.meta_key, self.cache_dir)

    def snapshots(self, target: str | None = None) -> list[SnapshotInfo]:
        """Snapshot headers (host readable), oldest first; only ``target``'s when given."""
        found = self.headers.all()
        return [s for s in found if target is None or s.target == target]

    def snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return self.headers.info(snapshot_id)

    def read_body(self, snapshot_id: str) -> dict[str, Any]:
        """A snapshot's body (tree ids / chunk list, names): needs the identity."""
        return self.headers.body(snapshot_id, self.decryption)

    def read_blobs(
        self, ids: Iterable[bytes], *, index: Index | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(id, plaintext)`` of each distinct id, grouped per pack (each pack fetched and
        decrypted once, every blob's hash checked)."""
        return reader.read_blobs(
            self.storage,
            self.host_key,
            index if index is not None else self.index(),
            self.decryption,
            ids,
            mirrors=self.mirrors,
            fallback=self._fell_back,
        )

    def _fell_back(self, pack: str, failure: str, mirror: str) -> None:
        self.events(
            Event(
                "restore",
                f"{failure}; read pack {pack} from {mirror} instead (its copy is good)",
                "warning",
                {"pack": pack, "mirror": mirror},
            )
        )

    # ---- writing ----

    def writer(
        self,
        target: str,
        kind: str,
        *,
        started: datetime | None = None,
        group: dict[str, Any] | None = None,
    ) -> ChunkStoreWriter:
        """A writer holding a shared lock (``with store.writer(...) as w``). ``started`` is
        the snapshot's time (its id's stamp); now when not given (tests of retention set it)."""
        if started is not None and started.tzinfo is None:
            raise UsageError("a snapshot's start time must be timezone-aware")
        if kind not in ("tree", "stream"):
            raise UsageError(f"snapshot kind {kind!r} is neither 'tree' nor 'stream'")
        lock = StoreLock(self.storage, "shared", self.lock_ttl, self.lock_wait).acquire()
        try:
            index = self.index()
            return ChunkStoreWriter(
                self.storage,
                self.host_key,
                self.config,
                index,
                lock,
                target,
                kind,
                started=started,
                group=group,
            )
        except BaseException:
            lock.release()
            raise

    def pins(self) -> dict[str, pinning.Pin]:
        """Snapshot id -> its strongest pin."""
        return pinning.read_pins(self.storage, self.host_key.meta_key)

    def pin(self, snapshot_id: str, until: datetime | None = None, note: str = "") -> pinning.Pin:
        return pinning.pin(self.storage, self.host_key.meta_key, snapshot_id, until, note)

    def unpin(self, snapshot_id: str) -> int:
        return pinning.unpin(self.storage, snapshot_id)

    def forget(self, snapshot_ids: Iterable[str]) -> list[str]:
        """Delete snapshot objects (their data goes at the next prune); returns the ids."""
        ids = list(dict.fromkeys(snapshot_ids))
        for snapshot_id in ids:  # unknown ids fail before anything is deleted (damaged ones go)
            if not is_snapshot_id(snapshot_id) or not self.storage.exists(
                snapshot_key(snapshot_id)
            ):
                raise UsageError(
                    f"no snapshot {snapshot_id!r} in this chunk store",
                    hint="list the snapshots to see which exist",
                )
        for snapshot_id in ids:
            self.storage.delete(snapshot_key(snapshot_id))
            pinning.unpin(self.storage, snapshot_id)  # its ended pins, if any
        return ids

    def prune(
        self, *, repack_below: float = 0.5, grace: timedelta = timedelta(hours=1)
    ) -> PruneReport:
        with StoreLock(self.storage, "exclusive", self.lock_ttl, self.lock_wait) as lock:
            report = prune(self, repack_below=repack_below, grace=grace, lock=lock)
        report.removed_locks.extend(lock.removed_stale)
        return report

    def verify(self, *, read_data: float = 0.0) -> VerifyReport:
        return verify(self, read_data=read_data)


def _recover_id_key(storage: Storage, decryption: DecryptionKey) -> HostKey:
    try:
        wrapped = storage.read_bytes(ID_KEY)
    except FileNotFoundError:
        raise IntegrityError(
            f"the chunk store has no {ID_KEY}", hint="give the id key file instead (host_key)"
        ) from None
    return HostKey(
        bytes(open_age(wrapped, decryption)), source=f"{ID_KEY} (recovered with the identity)"
    )
