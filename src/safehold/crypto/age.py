"""Streaming age decryption (pyrage) in bounded memory: a pull-style reader.

pyrage's ``decrypt_io`` is a loop that *pulls* from a file-like object (8 KiB ``read`` calls)
and *pushes* into another, releasing the GIL while it decrypts. It runs here on one worker
thread whose authenticated plaintext goes through a bounded channel (``QUEUE_BYTES``), so
memory stays a few MiB whatever the stream's size. ``read`` takes from the channel. Opening the
reader waits for the first plaintext (or the end), so a wrong key or a damaged header fails at
once, before any byte is handed out. (Encryption is in ``age_writer``.)

Authentication: age seals the payload in 64 KiB chunks, each with its own tag, and marks the
last one. The reader hands out a chunk only after its tag verified, but a later chunk can still
fail (tampering) or be missing (truncation), and that is only known at the end. So a consumer
must treat everything it read as invalid until ``read`` returned ``b""`` (end of stream, whole
file authenticated); every failure raises from ``read`` before that. Stage, then commit only
after the end (restore already works this way: staging database/folder, then swap).
"""

from __future__ import annotations

import io
import threading
from typing import IO, Any

from ..errors import DecryptionKeyError, IntegrityError
from ..model import ByteSource
from . import _pyrage
from ._channel import Channel, ChannelWriter, SourceReader
from .header import is_age, stanza_types
from .keys import DecryptionKey

QUEUE_BYTES = 4 << 20  # plaintext in flight between the worker and the reader
READ_BUFFER = 1 << 20
JOIN_TIMEOUT_S = 10.0
AGE_CHUNK = 64 * 1024


class AgeReader(io.RawIOBase):
    """Decrypted bytes of an age stream; use through ``age_reader``. Does not close ``source``."""

    def __init__(self, source: ByteSource, key: DecryptionKey) -> None:
        super().__init__()
        if not key.identities:
            raise ValueError("unlock the repository key first (DecryptionKey.bind)")
        identities = [_pyrage.parse_identity(text) for text in key.identities]
        self._key = key
        self._channel = Channel(QUEUE_BYTES)
        self._source = SourceReader(source)
        self._output = ChannelWriter(self._channel)
        self._error: BaseException | None = None
        self._current = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(
            target=self._decrypt, args=(identities,), name="safehold-age-decrypt", daemon=True
        )
        self._thread.start()
        try:
            self._fill(block=True)  # a wrong key or a damaged header fails here
        except BaseException:
            self.close()
            raise

    def _decrypt(self, identities: list[Any]) -> None:
        try:
            _pyrage.decrypt_io(self._source, self._output, identities)
            self._output.flush()
        except BaseException as exc:
            self._error = exc
            self._channel.end(discard=True)  # nothing more reaches the reader after a failure
        finally:
            self._channel.end()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on a closed age reader")
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            if not self._current and not self._fill(block=filled == 0):
                break
            count = min(len(self._current), len(target) - filled)
            target[filled : filled + count] = self._current[:count]
            self._current = self._current[count:]
            filled += count
        return filled

    def _fill(self, block: bool) -> bool:
        """Take the next plaintext piece; False at the end or when none is ready (not block)."""
        if self._ended:
            return False
        item = self._channel.get(block)
        if item is not None:
            self._current = memoryview(item)
            return True
        if not self._channel.drained:
            return False
        self._thread.join()
        if self._error is not None:
            raise self._translate(self._error)
        self._ended = True  # the whole file was read and authenticated
        return False

    def close(self) -> None:
        if not self.closed:
            self._channel.close()
            self._thread.join(JOIN_TIMEOUT_S)
        super().close()

    def _translate(self, error: BaseException) -> BaseException:
        if self._source.error is not None:
            return self._source.error  # the source's own failure (storage, network), as raised
        text = str(error)
        head = self._source.head
        done = self._output.written
        if not head:
            return IntegrityError("the encrypted file is empty", hint="it is damaged or truncated")
        if not is_age(head):
            return IntegrityError(
                "not an age-encrypted file (it does not start with 'age-encryption.org/v1')",
                hint="it may be an unencrypted backup, or damaged",
            )
        if isinstance(error, _pyrage.DecryptError):
            if "No matching keys" in text:
                return self._wrong_key(head)
            if "MAC" in text:
                return IntegrityError(
                    "the age header failed authentication (header MAC): the file was altered "
                    "or damaged",
                    hint="restore another backup; check the storage for corruption",
                )
            reason = text.splitlines()[0] if text else type(error).__name__
            return IntegrityError(
                f"the age header is damaged or cut short ({reason})",
                hint="restore another backup; check the storage for corruption",
            )
        if "truncated" in text:
            return IntegrityError(
                f"the encrypted file is truncated: it ends after {done} bytes of plaintext "
                "without age's final chunk",
                hint="the upload or copy was cut short; restore another backup",
            )
        if "decryption error" in text:
            return IntegrityError(
                f"encrypted data failed authentication in chunk {done // AGE_CHUNK + 1} (after "
                f"{done} bytes of plaintext): the file was altered or damaged",
                hint="nothing read from it may be used; restore another backup",
            )
        return IntegrityError(f"decryption failed: {type(error).__name__}: {text}")

    def _wrong_key(self, head: bytes) -> DecryptionKeyError:
        types = stanza_types(head)
        where = self._key.source or "the decryption key"
        publics = ", ".join(self._key.recipients)
        if types == ["scrypt"]:
            return DecryptionKeyError(
                "this file is encrypted with a plain passphrase (age -p), not to a public key",
                hint="decrypt it with 'age -d' first; safehold streams only files encrypted to "
                "X25519 keys (its passphrase mode uses a repository key)",
            )
        count = len(types)
        stanzas = f"{count} recipient{'s' if count != 1 else ''}" if types else "other recipients"
        return DecryptionKeyError(
            f"no identity in {where} opens this file (it is encrypted to {stanzas}; the key's "
            f"public keys: {publics})",
            hint="use the identity matching a recipient listed in the backup's manifest; if the "
            "key is right, the file's header is damaged: compare its sha256 ('safehold verify')",
        )


def age_reader(source: ByteSource, key: DecryptionKey) -> IO[bytes]:
    """A read stream of the plaintext of the age file read from ``source``.

    Raises ``DecryptionKeyError`` at once when no identity matches, ``IntegrityError`` when the
    header is damaged; later damage or truncation raises ``IntegrityError`` from ``read``.
    Output is authenticated only when ``read`` returns ``b""``: stage it until then.
    """
    return io.BufferedReader(AgeReader(source, key), READ_BUFFER)
