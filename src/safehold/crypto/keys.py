"""Keys for age encryption: where they come from, what a manifest records, and ``keygen``.

Two modes:

- **X25519 recipients** ("age1..."): the backup host holds only public keys and cannot read
  what it wrote; restore needs an identity file ("AGE-SECRET-KEY-1...", age-keygen's format).
- **Passphrase (scrypt)**: age's scrypt recipient cannot be streamed through pyrage 1.4.0
  (``pyrage.passphrase`` works on whole buffers only), so a repository gets one random X25519
  identity, the *repository key*, stored beside the backups encrypted with the passphrase
  (an ordinary scrypt age file). Backups are encrypted to its public key. The standard tool
  decrypts them with ``age -d -i repository-key.age FILE.age`` (age asks for the passphrase).

Secrets live only in fields with ``repr=False`` and never appear in messages. They come from a
file (first line), an environment variable (named in the config) or a command (argv from
``shlex.split``, run without a shell; stdout without its trailing newline): never from argv.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DecryptionKeyError, IntegrityError, UsageError
from . import _pyrage
from .header import is_age
from .passphrase import read_file, read_passphrase

IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
RECIPIENT_PREFIX = "age1"
PASSPHRASE_MODE = "passphrase (scrypt)"  # noqa: S105 (a label, not a password)


@dataclass(frozen=True)
class EncryptionKey:
    """What backups are encrypted to. ``recipients`` are public; the passphrase is secret.

    In passphrase mode the key must be bound to the repository key (``bind``) before use;
    ``recipients`` then holds the repository key's public key.
    """

    recipients: tuple[str, ...] = ()
    passphrase: str | None = field(default=None, repr=False)
    source: str = ""  # where the key came from, for messages (never the secret itself)

    def __post_init__(self) -> None:
        if self.passphrase is None and not self.recipients:
            raise ValueError("an EncryptionKey needs recipients or a passphrase")
        if self.passphrase is not None and len(self.recipients) > 1:
            raise ValueError("a passphrase key has one recipient: the repository key")
        for number, recipient in enumerate(self.recipients, 1):
            check_recipient(recipient, f"recipient {number}")

    @property
    def mode(self) -> str:
        return "x25519" if self.passphrase is None else "passphrase"

    @property
    def needs_repository_key(self) -> bool:
        return self.passphrase is not None and not self.recipients

    def bind(self, repository_key: bytes | None) -> tuple[EncryptionKey, bytes | None]:
        """Passphrase mode: unlock ``repository_key`` (the stored file's bytes), or create one
        when there is none yet. Returns the usable key and, when created, the file to store
        (store it before the first artifact). Unlocking on every run authenticates the public
        key: a substituted key file cannot be opened with the operator's passphrase."""
        if not self.needs_repository_key:
            return self, None
        assert self.passphrase is not None
        if repository_key is None:
            content, recipient = create_repository_key(self.passphrase)
            return replace(self, recipients=(recipient,)), content
        identity = unlock_repository_key(repository_key, self.passphrase)
        return replace(self, recipients=(_pyrage.public_key(identity),)), None

    def describe(self) -> dict[str, Any]:
        """What the manifest records: the mode and the public recipient(s), never a secret."""
        mode = "x25519" if self.passphrase is None else PASSPHRASE_MODE
        data: dict[str, Any] = {"format": "age", "mode": mode, "recipients": list(self.recipients)}
        if self.passphrase is not None:
            data["identity"] = "repository key (unlocked with the passphrase)"
        return data


@dataclass(frozen=True)
class DecryptionKey:
    """What opens encrypted backups: X25519 identities, and/or the passphrase that unlocks the
    repository key (``bind`` adds that key's identity)."""

    identities: tuple[str, ...] = field(default=(), repr=False)
    passphrase: str | None = field(default=None, repr=False)
    source: str = ""

    def __post_init__(self) -> None:
        if self.passphrase is None and not self.identities:
            raise ValueError("a DecryptionKey needs identities or a passphrase")
        for number, identity in enumerate(self.identities, 1):
            check_identity(identity, f"identity {number}")

    @property
    def needs_repository_key(self) -> bool:
        return self.passphrase is not None

    @property
    def recipients(self) -> tuple[str, ...]:
        """The public keys of the identities (safe to show)."""
        return tuple(_pyrage.public_key(identity) for identity in self.identities)

    def bind(self, repository_key: bytes) -> DecryptionKey:
        """Unlock the repository key (passphrase mode) and add its identity."""
        if self.passphrase is None:
            return self
        identity = unlock_repository_key(repository_key, self.passphrase)
        source = f"{self.source} + repository key" if self.source else "repository key"
        return DecryptionKey(identities=(*self.identities, identity), source=source)


def check_recipient(text: str, where: str) -> None:
    if not text.startswith(RECIPIENT_PREFIX):
        kind = "an SSH key" if text.startswith(("ssh-", "ecdsa-")) else "not an age key"
        raise ConfigError(
            f"{where}: {text[:24]!r}... is {kind}",
            hint="use an age X25519 public key (age1...), as printed by 'safehold keygen'",
        )
    try:
        _pyrage.parse_recipient(text)
    except _pyrage.RecipientError:
        raise ConfigError(
            f"{where}: {text[:24]!r}... is not a valid age X25519 public key",
            hint="copy the whole 'age1...' line printed by 'safehold keygen' or age-keygen",
        ) from None


def check_identity(text: str, where: str) -> None:
    # The text is secret: messages name the place, never the content.
    bad = not text.upper().startswith(IDENTITY_PREFIX)
    if not bad:
        try:
            _pyrage.parse_identity(text)
        except _pyrage.IdentityError:
            bad = True
    if bad:
        raise ConfigError(
            f"{where} is not a valid age X25519 identity (AGE-SECRET-KEY-1...)",
            hint="use the identity file written by 'safehold keygen' or age-keygen",
        )


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_recipients(text: str, where: str) -> tuple[str, ...]:
    """An age recipients file: one public key a line; blank lines and '#' comments ignored."""
    found = []
    for number, line in _lines(text):
        check_recipient(line, f"{where}, line {number}")
        found.append(line)
    return tuple(found)


def parse_identities(text: str, where: str) -> tuple[str, ...]:
    """An age identity file (age-keygen's format): '#' comments and AGE-SECRET-KEY-1 lines."""
    found = []
    for number, line in _lines(text):
        check_identity(line, f"{where}, line {number}")
        found.append(line)
    if not found:
        raise ConfigError(
            f"{where} holds no identity", hint="an identity line starts AGE-SECRET-KEY-1"
        )
    return tuple(found)


def load_encryption_key(
    recipients: tuple[str, ...] = (),
    recipients_file: Path | None = None,
    passphrase_file: Path | None = None,
    passphrase_env: str | None = None,
    passphrase_command: str | None = None,
) -> EncryptionKey | None:
    """The configured encryption key, or None when encryption is not configured."""
    found = list(recipients)
    sources = ["config"] if recipients else []
    if recipients_file is not None:
        text = read_file(recipients_file, "recipients file").decode("utf-8", "replace")
        found += parse_recipients(text, f"recipients file {recipients_file}")
        sources.append(f"recipients file {recipients_file}")
        if not found:
            raise ConfigError(f"recipients file {recipients_file} holds no public key")
    secret = read_passphrase(passphrase_file, passphrase_env, passphrase_command)
    if found and secret:
        raise ConfigError(
            "both recipients and a passphrase are configured for encryption",
            hint="choose one: recipients (public keys) or a passphrase",
        )
    if secret:
        return EncryptionKey(passphrase=secret[0], source=secret[1])
    if found:
        return EncryptionKey(recipients=tuple(dict.fromkeys(found)), source=", ".join(sources))
    return None


def load_decryption_key(
    identity_file: Path | None = None,
    passphrase_file: Path | None = None,
    passphrase_env: str | None = None,
    passphrase_command: str | None = None,
) -> DecryptionKey | None:
    """The configured decryption key, or None. A passphrase-encrypted identity file (as age
    accepts with ``-i``) is unlocked with the configured passphrase."""
    secret = read_passphrase(passphrase_file, passphrase_env, passphrase_command)
    if identity_file is None:
        return None if secret is None else DecryptionKey(passphrase=secret[0], source=secret[1])
    content = read_file(identity_file, "identity file")
    where = f"identity file {identity_file}"
    if is_age(content):
        if secret is None:
            raise DecryptionKeyError(
                f"the {where} is passphrase-encrypted",
                hint="configure the passphrase (passphrase_file, passphrase_env or "
                "passphrase_command)",
            )
        content = _unlock(content, secret[0], where)
        secret = None  # used up: it opened the identity file
    identities = parse_identities(content.decode("utf-8", "replace"), where)
    return DecryptionKey(
        identities=identities,
        passphrase=None if secret is None else secret[0],
        source=where,
    )


def _unlock(content: bytes, passphrase: str, where: str) -> bytes:
    if not is_age(content):
        raise IntegrityError(f"the {where} is not an age file", hint="it may be damaged")
    try:
        return _pyrage.passphrase_decrypt(content, passphrase)
    except _pyrage.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise IntegrityError(
                f"the {where} is not passphrase-encrypted (no scrypt stanza)",
                hint="it is encrypted to a public key; it cannot be unlocked with a passphrase",
            ) from None
        raise DecryptionKeyError(
            f"the passphrase does not unlock the {where}",
            hint="check the passphrase source (a wrong passphrase and a damaged file look alike)",
        ) from None


def create_repository_key(passphrase: str) -> tuple[bytes, str]:
    """A new repository key: (file content, scrypt-encrypted and armored; its public key)."""
    identity, recipient = _pyrage.generate_identity()
    text = (
        "# safehold repository key: decrypts this repository's backups. Open it with the\n"
        "# repository passphrase: age -d -i repository-key.age FILE.age\n"
        f"# created: {_now()}\n# public key: {recipient}\n{identity}\n"
    )
    return _pyrage.passphrase_encrypt(text.encode(), passphrase), recipient


def unlock_repository_key(content: bytes, passphrase: str) -> str:
    """The repository key's identity; a wrong passphrase is a ``DecryptionKeyError``."""
    plain = _unlock(content, passphrase, "repository key")
    return parse_identities(plain.decode("utf-8", "replace"), "the repository key")[0]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_keypair(identity_path: Path, *, force: bool = False) -> str:
    """Write a new identity in age-keygen's format (mode 0600, never over an existing file
    unless ``force``) and return its public key."""
    identity, recipient = _pyrage.generate_identity()
    content = f"# created: {_now()}\n# public key: {recipient}\n{identity}\n".encode()
    write_secret(
        identity_path,
        content,
        force=force,
        exists_hint="choose another --output, or --force to replace it (backups encrypted to "
        "its public key can then only be restored with a copy of the old file)",
    )
    return recipient


def write_secret(path: Path, content: bytes, *, exists_hint: str, force: bool = False) -> None:
    """Write ``content`` to the secret file ``path``, mode 0600 whatever the umask, flushed to
    disk; never through a symlink. An existing file is a UsageError (with ``exists_hint``)
    unless ``force``, which replaces it atomically. Its folder is made (0700) if missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    temp = f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    target = path.with_name(temp) if force else path
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists", hint=exists_hint) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
