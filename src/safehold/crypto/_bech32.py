"""Typed access to the Bech32 reference implementation, to read an age recipient's key bytes.

The one place that touches ``bech32``, so the rest of the code sees typed bytes.
"""

from __future__ import annotations

import bech32

RECIPIENT_HRP = "age"


def recipient_bytes(text: str) -> bytes:
    """The 32-byte X25519 public key of an "age1..." recipient; ``ValueError`` otherwise."""
    hrp, data = bech32.bech32_decode(text.strip())
    if hrp != RECIPIENT_HRP or data is None:
        raise ValueError("not an age X25519 recipient (age1...)")
    decoded = bech32.convertbits(data, 5, 8, False)
    if decoded is None or len(decoded) != 32:
        raise ValueError("an age X25519 recipient holds a 32-byte key")
    return bytes(decoded)
