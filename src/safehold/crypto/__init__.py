"""Encryption at rest in the age format (pyrage): streaming writer/reader and key handling."""

from ..errors import DecryptionKeyError
from .age import AgeReader, AgeWriter, age_reader
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
    "unlock_repository_key",
]
