"""The id key: 32 random bytes on the backup host, and the keys derived from it.

- chunk id = BLAKE3 keyed with the id key, over the plaintext chunk: equal chunks dedup, and
  nobody without the key can test a guess against the ids;
- the FastCDC gear seed, so chunk boundaries (and thus chunk sizes) are secret too;
- the meta key, which seals the host-readable objects (index, snapshot headers);
- ``check``: a keyed hash of a fixed text, stored in the config, so a wrong key file is
  refused before it writes chunks no one else could dedup against.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..crypto import write_secret
from ..errors import ConfigError

ID_KEY_BYTES = 32
GEAR_CONTEXT = "safehold chunkstore gear v1"
META_CONTEXT = "safehold chunkstore meta v1"
CHECK_TEXT = b"safehold chunkstore check"
_HEADER = "# safehold chunk store id key: keep it secret (it names chunks and opens the index)\n"
# FastCDC keeps the seed in a uint64 and also shifts it left by one: 63 bits fit both.
_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class HostKey:
    """The id key of a chunk store, as held by the backup host (``HostKey.load(path)``)."""

    id_key: bytes = field(repr=False)
    source: str = ""  # where it came from, for messages

    def __post_init__(self) -> None:
        if len(self.id_key) != ID_KEY_BYTES:
            raise ConfigError(f"a chunk store id key is {ID_KEY_BYTES} bytes")

    @classmethod
    def generate(cls, path: Path) -> HostKey:
        """A new random id key written to ``path`` (0600, never over an existing file)."""
        key = cls(secrets.token_bytes(ID_KEY_BYTES), source=str(path))
        key.save(path)
        return key

    @classmethod
    def load(cls, path: Path) -> HostKey:
        try:
            text = Path(path).read_text("ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the chunk store id key file {path}: {exc}",
                hint="give the key file made at init (safehold keeps it 0600 on the backup host)",
            ) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln[0] != "#"]
        try:
            raw = bytes.fromhex(lines[0]) if len(lines) == 1 else b""
        except ValueError:
            raw = b""
        if len(raw) != ID_KEY_BYTES:
            raise ConfigError(
                f"{path} is not a chunk store id key file (one line of 64 hex digits)",
                hint="give the key file made at init, or recover it from the bucket with the "
                "age identity (ChunkStore.open(decryption=...))",
            )
        return cls(raw, source=str(path))

    def save(self, path: Path) -> None:
        """Write the key file (0600); an existing file is never replaced."""
        write_secret(
            Path(path),
            (_HEADER + self.id_key.hex() + "\n").encode("ascii"),
            exists_hint="load it with HostKey.load, or choose another path: a chunk store's id "
            "key must not be replaced",
        )

    @property
    def meta_key(self) -> bytes:
        return blake3.blake3(self.id_key, derive_key_context=META_CONTEXT).digest()

    @property
    def gear_seed(self) -> int:
        digest = blake3.blake3(self.id_key, derive_key_context=GEAR_CONTEXT).digest()
        return int.from_bytes(digest[:8], "little") & _SEED_MASK

    @property
    def check(self) -> str:
        return self.hasher(CHECK_TEXT).hexdigest()

    def hasher(self, data: bytes | memoryview = b"") -> blake3.blake3:
        return blake3.blake3(data, key=self.id_key)

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key).digest()
