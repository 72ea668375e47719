"""Host-readable objects (index, snapshot headers): JSON sealed with the meta key.

``b"SHCS1" + 12-byte random nonce + ChaCha20-Poly1305(zstd(json))`` with the object's key
name as associated data, so an object moved to another name (an old index replayed as a new
one, one snapshot's header under another's name) fails to open rather than being believed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import IntegrityError

MAGIC = b"SHCS1"
NONCE = 12


def seal(meta_key: bytes, name: str, value: Any) -> bytes:
    plain = zstandard.ZstdCompressor(level=3).compress(
        json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    )
    nonce = os.urandom(NONCE)
    return MAGIC + nonce + ChaCha20Poly1305(meta_key).encrypt(nonce, plain, name.encode())


def unseal(meta_key: bytes, name: str, data: bytes) -> Any:
    """The JSON value sealed under ``name``; ``IntegrityError`` when it does not open."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + NONCE + 16:
        raise IntegrityError(
            f"chunk store object {name} is not a sealed object (bad magic or too short)",
            hint="it is damaged or not written by safehold; run verify",
        )
    nonce = data[len(MAGIC) : len(MAGIC) + NONCE]
    try:
        plain = ChaCha20Poly1305(meta_key).decrypt(nonce, data[len(MAGIC) + NONCE :], name.encode())
    except InvalidTag:
        raise IntegrityError(
            f"chunk store object {name} failed authentication",
            hint="it was altered, moved from another name, or sealed with another id key",
        ) from None
    try:
        return json.loads(zstandard.ZstdDecompressor().decompress(plain))
    except (zstandard.ZstdError, ValueError) as exc:
        raise IntegrityError(f"chunk store object {name} is unreadable: {exc}") from None
