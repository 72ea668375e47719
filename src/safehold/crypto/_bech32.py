"""Typed access to the Bech32 reference implementation, to read the key bytes of age keys.

The one place that touches ``bech32``, so the rest of the code sees typed bytes.
"""

from __future__ import annotations

import bech32

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


def recipient_bytes(text: str) -> bytes:
    """The 32-byte X25519 public key of an "age1..." recipient; ``ValueError`` otherwise."""
    return _key_bytes(text, RECIPIENT_HRP, "recipient (age1...)")


def identity_bytes(text: str) -> bytes:
    """The 32-byte X25519 secret of an "AGE-SECRET-KEY-1..." identity; ``ValueError`` otherwise."""
    return _key_bytes(text, IDENTITY_HRP, "identity (AGE-SECRET-KEY-1...)")


def _key_bytes(text: str, hrp: str, what: str) -> bytes:
    found, data = bech32.bech32_decode(text.strip())
    if found != hrp or data is None:
        raise ValueError(f"not an age X25519 {what}")
    decoded = bech32.convertbits(data, 5, 8, False)
    if decoded is None or len(decoded) != 32:
        raise ValueError(f"an age X25519 {what} holds a 32-byte key")
    return bytes(decoded)
