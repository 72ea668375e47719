"""Streaming age encryption on the caller's thread, with OpenSSL's ChaCha20-Poly1305.

Why not pyrage here (it still decrypts, and makes and parses keys): its ``encrypt_io`` pulls
the plaintext through a Python ``read`` call per 8 KiB and needs a worker thread fed through a
queue, which caps it near 500 MB/s and competes for the GIL with the compressor threads
feeding it. ``cryptography``'s AEAD seals a 64 KiB chunk in one call that releases the GIL
(about 1.9 GB/s a core here), so encryption costs a few percent of a backup's time, and a sink
error (disk full) is raised where the caller handles it.

The format is age v1 (https://age-encryption.org/v1) for X25519 recipients:

- a random 16-byte file key, wrapped for each recipient: an ephemeral X25519 share, the wrap
  key = HKDF-SHA256(shared secret, salt = share || recipient, "age-encryption.org/v1/X25519"),
  the body = ChaCha20-Poly1305(wrap key, zero nonce, file key);
- the header ends with ``--- `` and HMAC-SHA256 over it, keyed HKDF(file key, "header");
- the payload: a 16-byte random nonce, then the plaintext in 64 KiB chunks sealed with
  HKDF(file key, salt = nonce, "payload"), each chunk's nonce an 11-byte big-endian counter and
  a last-chunk flag byte. A chunk is sealed only once it is known whether more follows, so the
  last one (possibly empty, only for empty plaintext) carries the flag.

The ``age`` CLI and pyrage open these files (tests exchange files with both, both ways).
"""

from __future__ import annotations

import base64
import io
import os

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..model import ByteSink
from ._bech32 import recipient_bytes
from .keys import EncryptionKey

INTRO = b"age-encryption.org/v1\n"
X25519_LABEL = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024
COLUMNS = 64  # a stanza body's base64 is wrapped at this many characters a line


class AgeWriter:
    """Encrypts what is written to it into an age file in ``sink``; ``finish()`` ends it.

    Each full chunk is sealed and written (the header with the first) as soon as the next byte
    arrives, so the last chunk can carry its flag; the sink sees no write before the first
    full chunk or ``finish()``. The caller must call ``finish()`` (the
    sink then holds a complete age file) or ``abort()`` (the caller discards the sink's
    content). Any error in ``write`` or ``finish`` aborts first, then raises.
    """

    def __init__(self, sink: ByteSink, key: EncryptionKey) -> None:
        if key.needs_repository_key:
            raise ValueError("bind the passphrase key to the repository key first (key.bind)")
        publics = [recipient_bytes(text) for text in key.recipients]
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        self._sink = sink
        self._aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
        self._head = header(file_key, publics) + nonce  # goes out with the first chunk
        self._pending = bytearray()
        self._counter = 0
        self._state = "open"

    def write(self, data: bytes | memoryview) -> int:
        self._check_open()
        try:
            self._pending += data
            full = (len(self._pending) - 1) // CHUNK  # keep the last chunk until more arrives
            if full > 0:
                view = memoryview(self._pending)
                try:
                    sealed = [
                        self._seal(view[i * CHUNK : (i + 1) * CHUNK], False) for i in range(full)
                    ]
                finally:
                    view.release()
                del self._pending[: full * CHUNK]
                self._emit(sealed)
        except BaseException:
            self.abort()
            raise
        return len(data)

    def finish(self) -> None:
        """Seal the last chunk (flagged as last) and write it."""
        self._check_open()
        try:
            self._emit([self._seal(bytes(self._pending), True)])
        except BaseException:
            self.abort()
            raise
        self._pending.clear()
        self._state = "finished"

    def abort(self) -> None:
        """Forget the plaintext not yet written; idempotent."""
        if self._state == "open":
            self._state = "aborted"
        self._pending.clear()

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._state == "open":
            self.abort()

    def _emit(self, sealed: list[bytes]) -> None:
        if self._head:
            sealed.insert(0, self._head)
            self._head = b""
        self._sink.write(b"".join(sealed))

    def _seal(self, chunk: bytes | memoryview, last: bool) -> bytes:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, None)

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"this AgeWriter is {self._state}")


def seal_age(data: bytes | memoryview, key: EncryptionKey) -> bytes:
    """``data`` as one whole age file (small things: a key, a record, a WAL segment)."""
    sink = io.BytesIO()
    with AgeWriter(sink, key) as writer:
        writer.write(data)
        writer.finish()
    return sink.getvalue()


def header(file_key: bytes, publics: list[bytes]) -> bytes:
    """The age header: one X25519 stanza per recipient, then the MAC line."""
    text = INTRO + b"".join(_x25519_stanza(file_key, public) for public in publics) + b"---"
    mac = hmac.HMAC(hkdf(file_key, None, b"header"), hashes.SHA256())
    mac.update(text)
    return text + b" " + b64(mac.finalize()) + b"\n"


def _x25519_stanza(file_key: bytes, public: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    wrap_key = hkdf(shared, share + public, X25519_LABEL)
    body = b64(ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None))
    lines = [body[i : i + COLUMNS] for i in range(0, len(body), COLUMNS)]
    if len(body) % COLUMNS == 0:
        lines.append(b"")  # a full last line would read as "more follows"
    return b"-> X25519 " + b64(share) + b"\n" + b"\n".join(lines) + b"\n"


def hkdf(secret: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")
