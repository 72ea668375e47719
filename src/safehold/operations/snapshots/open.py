"""Opening the repository's chunk store with the keys this host has.

The backup host keeps the store's id key in a 0600 file (``backup.id_key_file``, by default
``BACKUP_DIR/.safehold/keys/chunk-id.key``); the first chunked backup creates the key and the
store, under the repository lock so two first backups cannot make two stores. A new backup host
that has the age identity recovers the id key from the store and keeps it; a restore host needs
only the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...chunkstore import ChunkStore, HostKey
from ...chunkstore.layout import CONFIG
from ...chunkstore.reader import Mirror
from ...crypto import DecryptionKey, EncryptionKey
from ...errors import ConfigError, UsageError
from ...lock import repository_lock
from ...model import EventSink, null_sink
from ...storage.base import Storage


@dataclass(frozen=True)
class StoreAccess:
    """Where the store is and which keys this host holds."""

    storage: Storage
    key_file: Path
    encryption: EncryptionKey | None = None  # the recipients (backup)
    decryption: DecryptionKey | None = None  # the identity (restore, export, ls)
    cache_dir: Path | None = None
    lock_timeout: float = 300.0
    lock_root: Path = Path(".")  # the local repository whose lock guards creating the store
    mirrors: tuple[Mirror, ...] = ()  # copies in other locations: a bad pack is read there
    events: EventSink = null_sink


def open_store(access: StoreAccess, *, create: bool = False) -> ChunkStore:
    """The store, created first when ``create`` (a backup) and there is none yet."""
    storage = access.storage
    if not storage.exists(CONFIG):
        if not create:
            raise UsageError(
                f"{storage.description} holds no chunk store (no snapshots)",
                hint='back up with backup.format = "chunked" (or backup.chunked_targets) first',
            )
        return _create(access)
    host_key = HostKey.load(access.key_file) if access.key_file.exists() else None
    if host_key is None and access.decryption is None:
        raise ConfigError(
            f"this host has no id key for the chunk store in {storage.description} "
            f"({access.key_file} is missing)",
            hint="copy the key file from the backup host, or configure encryption.identity_file "
            "once: the key is then recovered from the store and kept here",
        )
    store = ChunkStore.open(
        storage,
        host_key=host_key,
        decryption=access.decryption,
        encryption=access.encryption if create else None,
        cache_dir=access.cache_dir,
        mirrors=access.mirrors,
        events=access.events,
        lock_wait=access.lock_timeout,
    )
    if host_key is None and create:  # a new backup host: keep the recovered key for next time
        store.host_key.save(access.key_file)
    return store


def _create(access: StoreAccess) -> ChunkStore:
    if access.encryption is None:
        raise ConfigError(
            'backup.format = "chunked" needs age recipients: chunk store packs are always '
            "encrypted",
            hint="set encryption.recipients (safehold keygen makes a key pair); the backup host "
            "needs only the public key",
        )
    storage = access.storage
    # This host's repository lock: two first backups here cannot make two stores. (Two hosts
    # initialising one bucket at the same moment are not guarded: set the store up from one.)
    with repository_lock(
        access.lock_root,
        exclusive=True,
        timeout=access.lock_timeout,
        purpose="safehold chunk store init",
    ):
        if storage.exists(CONFIG):  # another first backup made it meanwhile
            return open_store(access, create=True)
        key_file = access.key_file
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = HostKey.load(key_file) if key_file.exists() else HostKey.generate(key_file)
        ChunkStore.init(storage, host_key, access.encryption)
    return open_store(access, create=True)
