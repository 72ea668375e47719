"""Whole-buffer age decryption with OpenSSL's ChaCha20-Poly1305: the chunk store's packs.

Why not pyrage here (``age_reader`` still uses it for streams): measured on this machine,
``pyrage.decrypt`` opens a 16 MiB pack in 37 ms and holds the GIL, so two threads take as long
as one after the other; ``cryptography``'s AEAD opens the same payload in about 5 ms a core and
releases the GIL, so a restore's pack workers decrypt side by side. Reading packs is a
restore's hot path, so it is hand-written, as ``AgeWriter`` is for the same reason.

Only the common case is taken here: a binary header whose X25519 stanza one of the key's
identities opens, with a header MAC that checks. Anything else (an armored file, a key that
opens no stanza, a damaged header or payload) goes to ``age_reader``, which gives the same
plaintext or the same explained error as for every other age file. The format is age v1
(https://age-encryption.org/v1); see ``age_writer`` for the construction.
"""

from __future__ import annotations

import base64
import binascii
import io

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ._bech32 import identity_bytes
from .age import age_reader
from .age_writer import CHUNK, COLUMNS, INTRO, X25519_LABEL, b64, hkdf
from .keys import DecryptionKey

SEALED = CHUNK + 16  # a chunk and its Poly1305 tag


class _Slow(Exception):
    """Not the common case: ``age_reader`` decides (and explains)."""


def open_age(data: bytes, key: DecryptionKey) -> bytes | bytearray:
    """The authenticated plaintext of the age file ``data`` (a bytearray on the fast path: no
    second copy of a pack); errors as ``age_reader`` raises them."""
    try:
        return _open(data, key)
    except _Slow:
        with age_reader(io.BytesIO(data), key) as reader:
            return reader.read()


def _open(data: bytes, key: DecryptionKey) -> bytes | bytearray:
    if not data.startswith(INTRO):
        raise _Slow
    end = data.find(b"\n---", len(INTRO) - 1)
    newline = data.find(b"\n", end + 4)
    if end < 0 or newline < 0 or data[end + 4 : end + 5] != b" ":
        raise _Slow
    header = data[: end + 4]  # what the MAC covers: up to and including "---"
    mac = _b64decode(data[end + 5 : newline])
    file_key = _file_key(_stanzas(header[len(INTRO) : end + 1]), key)
    check = hmac.HMAC(hkdf(file_key, None, b"header"), hashes.SHA256())
    check.update(header)
    try:
        check.verify(mac)
    except Exception:
        raise _Slow from None
    payload = memoryview(data)[newline + 1 :]
    if len(payload) < 16 + 16:
        raise _Slow
    aead = ChaCha20Poly1305(hkdf(file_key, bytes(payload[:16]), b"payload"))
    return _payload(aead, payload[16:])


def _payload(aead: ChaCha20Poly1305, sealed: memoryview) -> bytearray:
    count = max(1, -(-len(sealed) // SEALED))
    plain = bytearray(len(sealed) - 16 * count)  # decrypted in place: one copy of the pack
    out = memoryview(plain)
    try:
        for number in range(count):
            last = number == count - 1
            piece = sealed[number * SEALED : (number + 1) * SEALED]
            if len(piece) < 16 or (last and len(piece) == 16 and count > 1):
                raise _Slow  # an empty last chunk is allowed only for an empty file
            nonce = number.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
            at = number * CHUNK
            aead.decrypt_into(nonce, piece, None, out[at : at + len(piece) - 16])
    except InvalidTag:
        raise _Slow from None
    finally:
        out.release()
    return plain


def _stanzas(text: bytes) -> list[tuple[list[bytes], bytes]]:
    """(arguments, body) of each stanza; the text ends with the newline before "---"."""
    stanzas: list[tuple[list[bytes], bytes]] = []
    lines = text.split(b"\n")[:-1]
    at = 0
    while at < len(lines):
        if not lines[at].startswith(b"-> "):
            raise _Slow
        args = lines[at][3:].split(b" ")
        at += 1
        body = b""
        while True:
            if at >= len(lines):
                raise _Slow
            line = lines[at]
            at += 1
            body += line
            if len(line) < COLUMNS:
                break
        stanzas.append((args, _b64decode(body)))
    return stanzas


def _file_key(stanzas: list[tuple[list[bytes], bytes]], key: DecryptionKey) -> bytes:
    secrets = []
    for identity in key.identities:
        try:
            secret = X25519PrivateKey.from_private_bytes(identity_bytes(identity))
        except ValueError:
            continue  # not an X25519 identity: age_reader knows the others
        secrets.append((secret, secret.public_key().public_bytes_raw()))
    for args, body in stanzas:
        if len(args) != 2 or args[0] != b"X25519" or len(body) != 32:
            continue
        share = _b64decode(args[1])
        if len(share) != 32:
            raise _Slow
        for secret, public in secrets:
            try:
                shared = secret.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise _Slow from None  # a low-order share: refused (and explained) there
            wrap = ChaCha20Poly1305(hkdf(shared, share + public, X25519_LABEL))
            try:
                return wrap.decrypt(bytes(12), body, None)
            except InvalidTag:
                continue
    raise _Slow


def _b64decode(text: bytes) -> bytes:
    # age's base64 is canonical and unpadded; anything else is not the common case.
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Slow from None
    if b64(raw) != text:
        raise _Slow
    return raw
