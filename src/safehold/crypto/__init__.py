"""Encryption at rest in the age format: streaming writer (cryptography), reader (pyrage), keys."""

from ..errors import DecryptionKeyError
from .age import AgeReader, age_reader
from .age_open import open_age
from .age_writer import AgeWriter, seal_age
from .header import SUFFIX, is_age
from .keys import (
    PASSPHRASE_MODE,
    DecryptionKey,
    EncryptionKey,
    create_repository_key,
    generate_keypair,
    load_decryption_key,
    load_encryption_key,
    unlock_repository_key,
    write_secret,
)

__all__ = [
    "PASSPHRASE_MODE",
    "SUFFIX",
    "AgeReader",
    "AgeWriter",
    "DecryptionKey",
    "DecryptionKeyError",
    "EncryptionKey",
    "age_reader",
    "create_repository_key",
    "generate_keypair",
    "is_age",
    "load_decryption_key",
    "load_encryption_key",
    "open_age",
    "seal_age",
    "unlock_repository_key",
    "write_secret",
]
