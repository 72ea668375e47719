"""Typed access to pyrage (the Python binding of rage, the Rust age implementation).

pyrage 1.4.0 ships neither stubs nor ``py.typed``; this module is the one place that touches it
untyped. Keys cross into pyrage as strings and are parsed here, so a parse error never carries
the key text.
"""

from __future__ import annotations

from typing import Any, Protocol

import pyrage  # type: ignore[import-untyped]

DecryptError: type[Exception] = pyrage.DecryptError
EncryptError: type[Exception] = pyrage.EncryptError
IdentityError: type[Exception] = pyrage.IdentityError
RecipientError: type[Exception] = pyrage.RecipientError


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


def parse_recipient(text: str) -> Any:
    """An X25519 recipient ("age1..."); raises ``RecipientError``."""
    return pyrage.x25519.Recipient.from_str(text)


def parse_identity(text: str) -> Any:
    """An X25519 identity ("AGE-SECRET-KEY-1..."); raises ``IdentityError``."""
    return pyrage.x25519.Identity.from_str(text)


def generate_identity() -> tuple[str, str]:
    """A new X25519 identity and its recipient, as strings."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def public_key(identity: str) -> str:
    return str(parse_identity(identity).to_public())


def decrypt_io(reader: Readable, writer: Writable, identities: list[Any]) -> None:
    """Streams: 8 KiB ``read`` calls in, 8 KiB ``write`` calls of authenticated plaintext out."""
    pyrage.decrypt_io(reader, writer, identities)


def passphrase_encrypt(plaintext: bytes, passphrase: str) -> bytes:
    """Whole-buffer scrypt encryption (armored): only for small things such as a key file."""
    return bytes(pyrage.passphrase.encrypt(plaintext, passphrase, armored=True))


def passphrase_decrypt(ciphertext: bytes, passphrase: str) -> bytes:
    return bytes(pyrage.passphrase.decrypt(ciphertext, passphrase))
