"""``chunks/config``: what a store is, written once at init and never replaced.

Plain JSON, so anyone holding the bucket can see the store's version, chunk sizes, pack size
and public recipients. ``id_key_check`` lets a host refuse a wrong id key file; ``mac`` (keyed
with the id key) stops someone who holds only the bucket from swapping in their own recipients
and reading every backup made after.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..crypto import EncryptionKey
from ..errors import ConfigError, IntegrityError, UsageError
from ..storage.base import Storage
from .hostkey import HostKey
from .layout import CONFIG

VERSION = 1
MIN_CHUNK = 512 << 10
AVG_CHUNK = 1 << 20
MAX_CHUNK = 8 << 20
PACK_SIZE = 16 << 20


@dataclass(frozen=True)
class StoreConfig:
    version: int
    min_chunk: int
    avg_chunk: int
    max_chunk: int
    pack_size: int
    recipients: tuple[str, ...]
    id_key_check: str

    @classmethod
    def new(
        cls,
        host_key: HostKey,
        encryption: EncryptionKey,
        pack_size: int,
        chunk_sizes: tuple[int, int, int] | None,
    ) -> StoreConfig:
        low, avg, high = chunk_sizes or (MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        if not (64 <= low <= avg <= high <= 16 << 20 and avg >= 256 and high >= 1024):
            raise UsageError(f"chunk sizes {low}/{avg}/{high} are out of FastCDC's range")
        if pack_size < 1024:
            raise UsageError(f"pack size {pack_size} is too small (at least 1 KiB)")
        if encryption.needs_repository_key:
            raise UsageError("bind the passphrase key to the repository key first (key.bind)")
        return cls(VERSION, low, avg, high, pack_size, encryption.recipients, host_key.check)

    def encryption(self) -> EncryptionKey:
        return EncryptionKey(recipients=self.recipients, source="chunk store config")

    def _fields(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        return data

    def encode(self, host_key: HostKey) -> bytes:
        data = self._fields()
        data["mac"] = _mac(host_key, data)
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> tuple[StoreConfig, str]:
        """The config and its stored mac (checked later, once the id key is known)."""
        try:
            data = json.loads(raw)
            mac = str(data.pop("mac"))
            data["recipients"] = tuple(data["recipients"])
            config = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(
                f"the chunk store config is unreadable ({exc})",
                hint="it is damaged or was written by a newer safehold",
            ) from None
        if config.version != VERSION:
            raise ConfigError(
                f"this chunk store is format version {config.version}; this safehold reads "
                f"version {VERSION}",
                hint="use a safehold release that knows this format",
            )
        return config, mac

    def check_key(self, host_key: HostKey, mac: str) -> None:
        if not hmac.compare_digest(host_key.check, self.id_key_check):
            raise ConfigError(
                f"the id key ({host_key.source or 'given'}) is not this chunk store's key",
                hint="give the key file made when this store was initialised, or open with the "
                "age identity to recover the key from the bucket",
            )
        if not hmac.compare_digest(mac, _mac(host_key, self._fields())):
            raise IntegrityError(
                "the chunk store config was altered (its mac does not match)",
                hint="someone with write access to the bucket changed it (recipients?); do not "
                "back up into this store until that is understood",
            )


def read_config(storage: Storage) -> tuple[StoreConfig, str]:
    try:
        raw = storage.read_bytes(CONFIG)
    except FileNotFoundError:
        raise UsageError(
            f"{storage.description} holds no chunk store (no {CONFIG})",
            hint="initialise one first (ChunkStore.init), or check the location",
        ) from None
    return StoreConfig.decode(raw)


def _mac(host_key: HostKey, fields: dict[str, Any]) -> str:
    text = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return host_key.hasher(b"safehold chunkstore config mac\0" + text).hexdigest()
