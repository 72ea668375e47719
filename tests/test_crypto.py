"""age encryption at rest: round trips, the standard age CLI both ways, damage, keys, memory."""

from __future__ import annotations

import io
import os
import pty
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pyrage  # type: ignore[import-untyped]
import pytest

from safehold.crypto import (
    AgeWriter,
    DecryptionKey,
    DecryptionKeyError,
    EncryptionKey,
    age_reader,
    generate_keypair,
    is_age,
    load_decryption_key,
    load_encryption_key,
)
from safehold.crypto.passphrase import read_passphrase
from safehold.errors import ConfigError, IntegrityError, UsageError

from .conftest import ROOT

CHUNK = 64 * 1024
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 7, 3 * 1024 * 1024 + 5]
PASSPHRASE = "correct horse battery staple"


def keypair(tmp_path: Path, name: str = "id") -> tuple[Path, str]:
    path = tmp_path / f"{name}.txt"
    return path, generate_keypair(path)


def identity_key(path: Path) -> DecryptionKey:
    key = load_decryption_key(identity_file=path)
    assert key is not None
    return key


def payload(size: int) -> bytes:
    return os.urandom(size)


def encrypt(data: bytes, key: EncryptionKey, piece: int = 100_003) -> bytes:
    out = io.BytesIO()
    writer = AgeWriter(out, key)
    view = memoryview(data)
    for start in range(0, len(data), piece):
        writer.write(view[start : start + piece])
    writer.finish()
    return out.getvalue()


def decrypt(blob: bytes, key: DecryptionKey) -> bytes:
    with age_reader(io.BytesIO(blob), key) as reader:
        return reader.read()


def restore_staged(blob: bytes, key: DecryptionKey, target: Path) -> None:
    """How callers consume a reader: stage, and commit only after the authenticated end."""
    staging = target.with_name(target.name + ".staging")
    try:
        with age_reader(io.BytesIO(blob), key) as reader, staging.open("wb") as out:
            shutil.copyfileobj(reader, out, 1 << 20)
        staging.rename(target)
    finally:
        staging.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def age_cli() -> str:
    found = shutil.which("age")
    if found is None:  # never a skip: scripts/install-deps.sh installs it
        pytest.fail("the age CLI is missing: run scripts/install-deps.sh", pytrace=False)
    return found


# ---- round trips ----


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_one_recipient(tmp_path: Path, size: int) -> None:
    path, public = keypair(tmp_path)
    data = payload(size)
    blob = encrypt(data, EncryptionKey(recipients=(public,)))
    assert is_age(blob[:64])
    assert decrypt(blob, identity_key(path)) == data


def test_two_recipients_either_identity_decrypts(tmp_path: Path) -> None:
    first, first_public = keypair(tmp_path, "a")
    second, second_public = keypair(tmp_path, "b")
    data = payload(3 * CHUNK + 11)
    blob = encrypt(data, EncryptionKey(recipients=(first_public, second_public)), piece=5 << 20)
    assert decrypt(blob, identity_key(first)) == data
    assert decrypt(blob, identity_key(second)) == data


def test_big_single_write_and_small_reads(tmp_path: Path) -> None:
    path, public = keypair(tmp_path)
    data = payload(5 * 1024 * 1024 + 3)  # one write larger than the writer's queue
    blob = encrypt(data, EncryptionKey(recipients=(public,)), piece=len(data))
    with age_reader(io.BytesIO(blob), identity_key(path)) as reader:
        parts = []
        while part := reader.read(7777):
            parts.append(part)
    assert b"".join(parts) == data


@pytest.mark.slow
def test_passphrase_mode_round_trip_and_repository_key(tmp_path: Path) -> None:
    unbound = EncryptionKey(passphrase=PASSPHRASE)
    with pytest.raises(ValueError, match="bind"):
        AgeWriter(io.BytesIO(), unbound)
    bound, repository_key = unbound.bind(None)
    assert repository_key is not None and is_age(repository_key)
    assert PASSPHRASE.encode() not in repository_key
    again, created = unbound.bind(repository_key)  # the next run unlocks the same key
    assert created is None and again.recipients == bound.recipients
    assert bound.describe() == {
        "format": "age",
        "mode": "passphrase (scrypt)",
        "recipients": list(bound.recipients),
        "identity": "repository key (unlocked with the passphrase)",
    }
    data = payload(2 * CHUNK + 5)
    blob = encrypt(data, again)
    assert decrypt(blob, DecryptionKey(passphrase=PASSPHRASE).bind(repository_key)) == data
    with pytest.raises(DecryptionKeyError, match="passphrase does not unlock"):
        DecryptionKey(passphrase="not it").bind(repository_key)
    with pytest.raises(DecryptionKeyError, match="passphrase does not unlock"):
        EncryptionKey(passphrase="not it").bind(repository_key)


# ---- the standard age tool ----


def age_with_tty(argv: list[str], passphrase: str) -> tuple[int, bytes]:
    """Run age on a terminal (it reads passphrases only from one) and type ``passphrase``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: replaced by age at once
        os.execv(argv[0], argv)  # noqa: S606 (an argv list, no shell)
    output, sent = b"", False
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not sent and b"passphrase" in output.lower():
            os.write(fd, passphrase.encode() + b"\n")
            sent = True
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output


@pytest.mark.parametrize("size", [0, 1, CHUNK, 2 * CHUNK, 4 * CHUNK + 99])
def test_age_cli_reads_ours_and_we_read_age_cli(tmp_path: Path, age_cli: str, size: int) -> None:
    path, public = keypair(tmp_path)
    data = payload(size)
    ours = tmp_path / "ours.age"
    _, second_public = keypair(tmp_path, "second")
    ours.write_bytes(encrypt(data, EncryptionKey(recipients=(second_public, public))))
    opened = subprocess.run([age_cli, "-d", "-i", str(path), str(ours)], capture_output=True)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == data
    source = tmp_path / "theirs.bin"
    source.write_bytes(data)
    theirs = tmp_path / "theirs.age"
    subprocess.run([age_cli, "-r", public, "-o", str(theirs), str(source)], check=True)
    assert decrypt(theirs.read_bytes(), identity_key(path)) == data


@pytest.mark.slow
def test_age_cli_opens_passphrase_mode_with_the_repository_key(
    tmp_path: Path, age_cli: str
) -> None:
    key, repository_key = EncryptionKey(passphrase=PASSPHRASE).bind(None)
    assert repository_key is not None
    key_file = tmp_path / "repository-key.age"
    key_file.write_bytes(repository_key)
    data = payload(CHUNK + 1)
    backup = tmp_path / "backup.age"
    backup.write_bytes(encrypt(data, key))
    out = tmp_path / "backup.out"
    argv = [age_cli, "-d", "-i", str(key_file), "-o", str(out), str(backup)]
    code, screen = age_with_tty(argv, PASSPHRASE)
    assert code == 0, screen
    assert out.read_bytes() == data
    code, screen = age_with_tty([*argv[:-2], str(tmp_path / "x"), str(backup)], "wrong")
    assert code != 0 and b"incorrect passphrase" in screen


# ---- wrong keys and damage: a clear error, and nothing committed ----


def test_wrong_identity_fails_before_any_output(tmp_path: Path) -> None:
    _, public = keypair(tmp_path, "right")
    wrong, wrong_public = keypair(tmp_path, "wrong")
    blob = encrypt(payload(3 * CHUNK), EncryptionKey(recipients=(public,)))
    with pytest.raises(DecryptionKeyError) as caught:
        age_reader(io.BytesIO(blob), identity_key(wrong))  # fails on opening, not later
    assert "1 recipient" in caught.value.message and wrong_public in caught.value.message
    assert caught.value.hint and "manifest" in caught.value.hint
    assert caught.value.exit_code == 2
    target = tmp_path / "restored.bin"
    with pytest.raises(DecryptionKeyError):
        restore_staged(blob, identity_key(wrong), target)
    assert not target.exists() and list(tmp_path.glob("*.staging")) == []


def test_plain_passphrase_file_gets_its_own_message(tmp_path: Path) -> None:
    path, _ = keypair(tmp_path)
    blob = pyrage.passphrase.encrypt(b"secret data", PASSPHRASE)
    with pytest.raises(DecryptionKeyError, match="age -p"):
        decrypt(bytes(blob), identity_key(path))


def damaged(blob: bytes, where: int) -> bytes:
    copy = bytearray(blob)
    copy[where] ^= 0x01
    return bytes(copy)


@pytest.mark.parametrize("where", ["middle", "last byte", "header mac", "payload nonce"])
def test_tampered_ciphertext_is_an_integrity_error(tmp_path: Path, where: str) -> None:
    path, public = keypair(tmp_path)
    blob = encrypt(payload(6 * CHUNK + 3), EncryptionKey(recipients=(public,)))
    header_end = blob.index(b"\n---") + 1
    payload_start = blob.index(b"\n", header_end) + 1
    offset = {
        "middle": len(blob) // 2,
        "last byte": len(blob) - 1,
        "header mac": header_end + 10,
        "payload nonce": payload_start + 3,
    }[where]
    target = tmp_path / "restored.bin"
    with pytest.raises(IntegrityError) as caught:
        restore_staged(damaged(blob, offset), identity_key(path), target)
    assert "altered" in caught.value.message or "damaged" in caught.value.message
    assert not target.exists() and list(tmp_path.glob("*.staging")) == []


@pytest.mark.parametrize("cut", ["chunk boundary", "mid chunk", "last chunk", "header"])
def test_truncated_ciphertext_is_an_integrity_error(tmp_path: Path, cut: str) -> None:
    path, public = keypair(tmp_path)
    blob = encrypt(payload(6 * CHUNK + 3), EncryptionKey(recipients=(public,)))
    payload_start = blob.index(b"\n", blob.index(b"\n---") + 1) + 1 + 16
    length = {
        "chunk boundary": payload_start + 3 * (CHUNK + 16),
        "mid chunk": payload_start + 3 * (CHUNK + 16) + 500,
        "last chunk": len(blob) - 1,
        "header": 40,
    }[cut]
    target = tmp_path / "restored.bin"
    with pytest.raises(IntegrityError):
        restore_staged(blob[:length], identity_key(path), target)
    assert not target.exists()


@pytest.mark.parametrize("blob", [b"", b"PGDMP\x01\x0e\x00 not encrypted at all" * 10])
def test_not_an_age_file(tmp_path: Path, blob: bytes) -> None:
    path, _ = keypair(tmp_path)
    assert not is_age(blob[:64])
    with pytest.raises(IntegrityError):
        decrypt(blob, identity_key(path))


def test_source_errors_come_through_as_raised(tmp_path: Path) -> None:
    path, public = keypair(tmp_path)
    blob = encrypt(payload(4 * CHUNK), EncryptionKey(recipients=(public,)))

    class Failing:
        def __init__(self) -> None:
            self.inner = io.BytesIO(blob)

        def read(self, size: int = -1) -> bytes:
            if self.inner.tell() > 2 * CHUNK:
                raise UsageError("storage went away")
            return self.inner.read(size)

    with pytest.raises(UsageError, match="storage went away"):
        age_reader(Failing(), identity_key(path)).read()


# ---- the writer's worker thread ----


def test_sink_error_surfaces_and_aborts_the_writer(tmp_path: Path) -> None:
    _, public = keypair(tmp_path)

    class Full:
        def write(self, data: bytes | memoryview) -> int:
            raise OSError(28, "No space left on device")

    writer = AgeWriter(Full(), EncryptionKey(recipients=(public,)))
    writer.write(b"x" * CHUNK)  # one chunk is held back until it is known to be the last
    with pytest.raises(OSError, match="No space left"):
        writer.write(b"x")
    with pytest.raises(ValueError, match="aborted"):
        writer.write(b"more")
    with pytest.raises(ValueError, match="aborted"):
        writer.finish()


def test_abort_and_early_close_do_not_hang(tmp_path: Path) -> None:
    path, public = keypair(tmp_path)
    out = io.BytesIO()
    writer = AgeWriter(out, EncryptionKey(recipients=(public,)))
    writer.write(b"y" * (3 << 20))
    written = out.tell()
    writer.abort()
    writer.abort()
    assert out.tell() == written  # nothing more reaches the sink, and no last chunk is sealed
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(out.getvalue(), identity_key(path))

    blob = encrypt(payload(12 << 20), EncryptionKey(recipients=(public,)), piece=1 << 20)
    reader = age_reader(io.BytesIO(blob), identity_key(path))
    assert len(reader.read(1000)) == 1000  # the worker is now blocked on a full queue
    workers = [t for t in threading.enumerate() if t.name == "safehold-age-decrypt"]
    reader.close()
    assert all(not t.is_alive() for t in workers)


# ---- keys: files, sources, secrets ----


def test_keygen_file_mode_format_and_no_overwrite(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask gives 0600
    try:
        path, public = keypair(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: 20") and lines[0].endswith("Z")
    assert lines[1] == f"# public key: {public}"
    assert lines[2].startswith("AGE-SECRET-KEY-1") and len(lines) == 3
    assert identity_key(path).recipients == (public,)
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair(path)
    assert path.read_text().splitlines()[1] == f"# public key: {public}"
    replaced = generate_keypair(path, force=True)
    assert replaced != public and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.txt"]


def test_keygen_command(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ["PATH"]}

    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "safehold", "keygen", *args]
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)

    done = keygen("--output", "keys/backup.txt")
    assert done.returncode == 0, done.stderr
    identity = tmp_path / "keys" / "backup.txt"
    public = done.stdout.strip()
    assert public.startswith("age1") and done.stdout.count("\n") == 1
    assert f"# public key: {public}" in identity.read_text()
    assert str(identity) in done.stderr and "cannot be restored" in done.stderr
    assert "AGE-SECRET-KEY" not in done.stdout + done.stderr
    if shutil.which("age-keygen"):
        shown = subprocess.run(["age-keygen", "-y", str(identity)], capture_output=True)
        assert shown.stdout.decode().strip() == public
    again = keygen("--output", "keys/backup.txt")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert keygen("--output", "keys/backup.txt", "--force").returncode == 0


def test_secrets_never_in_repr_or_messages(tmp_path: Path) -> None:
    path, _ = keypair(tmp_path)
    secret_line = path.read_text().splitlines()[2]
    decryption = identity_key(path)
    both = DecryptionKey(identities=decryption.identities, passphrase=PASSPHRASE)
    encryption = EncryptionKey(passphrase=PASSPHRASE, source="passphrase file /x")
    for text in (repr(decryption), str(both), repr(encryption), str(encryption.describe())):
        assert secret_line not in text and PASSPHRASE not in text
    broken = tmp_path / "broken.txt"
    broken.write_text(secret_line[:-3] + "qqq\n")
    with pytest.raises(ConfigError) as caught:
        load_decryption_key(identity_file=broken)
    assert secret_line[:-3] not in str(caught.value) and "line 1" in caught.value.message


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "pass"
    file.write_text(f"{PASSPHRASE}\r\nsecond line\n")
    assert read_passphrase(passphrase_file=file) == (PASSPHRASE, f"passphrase file {file}")
    monkeypatch.setenv("T_SAFEHOLD_PASSPHRASE", PASSPHRASE)
    assert read_passphrase(passphrase_env="T_SAFEHOLD_PASSPHRASE") is not None
    command = f"printf '%s\\n' '{PASSPHRASE}'"
    assert read_passphrase(passphrase_command=command) == (PASSPHRASE, "passphrase command")
    key = load_encryption_key(passphrase_command=command)
    assert key is not None and key.passphrase == PASSPHRASE and key.needs_repository_key
    with pytest.raises(ConfigError, match="exit status 3") as failed:
        read_passphrase(passphrase_command="sh -c 'echo nope >&2; exit 3'")
    assert "nope" in failed.value.message
    monkeypatch.delenv("T_SAFEHOLD_PASSPHRASE")
    with pytest.raises(ConfigError, match="not set"):
        read_passphrase(passphrase_env="T_SAFEHOLD_PASSPHRASE")
    with pytest.raises(ConfigError, match="more than one"):
        read_passphrase(passphrase_file=file, passphrase_command=command)
    file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_passphrase(passphrase_file=file)


@pytest.mark.slow
def test_recipient_and_identity_files(tmp_path: Path) -> None:
    first, first_public = keypair(tmp_path, "a")
    _, second_public = keypair(tmp_path, "b")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# ops team\n{first_public}\n\n{second_public}  \n{first_public}\n")
    key = load_encryption_key(recipients_file=recipients)
    assert key is not None and key.recipients == (first_public, second_public)
    assert key.describe() == {"format": "age", "mode": "x25519", "recipients": list(key.recipients)}
    assert load_encryption_key() is None and load_decryption_key() is None
    recipients.write_text("ssh-ed25519 AAAAC3Nza nobody@example\n")
    with pytest.raises(ConfigError, match=r"line 1.*SSH key"):
        load_encryption_key(recipients_file=recipients)
    with pytest.raises(ConfigError, match=r"not both|choose one"):
        load_encryption_key((first_public,), passphrase_command="printf x")
    # An identity file encrypted with a passphrase, as age accepts with -i.
    wrapped = tmp_path / "a.txt.age"
    wrapped.write_bytes(pyrage.passphrase.encrypt(first.read_bytes(), PASSPHRASE, armored=True))
    with pytest.raises(DecryptionKeyError, match="passphrase-encrypted"):
        load_decryption_key(identity_file=wrapped)
    (tmp_path / "pp").write_text(PASSPHRASE)
    opened = load_decryption_key(identity_file=wrapped, passphrase_file=tmp_path / "pp")
    assert opened is not None and opened.recipients == (first_public,)
    with pytest.raises(ConfigError, match="cannot read"):
        load_decryption_key(identity_file=tmp_path / "missing.txt")


# ---- bounded memory (pyrage allocates in Rust: measured from /proc, in a fresh process) ----

MEMORY_PROBE = """
import os, sys
from safehold.crypto import AgeWriter, DecryptionKey, EncryptionKey, age_reader, _pyrage

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

identity, public = _pyrage.generate_identity()
block, total = os.urandom(1 << 20), int(sys.argv[2]) << 20

class Null:
    def write(self, data):
        return len(data)

class Ciphertext:  # made on demand, so the file is never in memory
    def __init__(self):
        self.out, self.writer, self.left = [], None, total
        class Sink:
            def write(_, data):
                self.out.append(bytes(data))
                return len(data)
        self.writer = AgeWriter(Sink(), EncryptionKey(recipients=(public,)))
        self.buffer = b""
    def read(self, size=-1):
        while len(self.buffer) < size and (self.left or self.writer):
            if self.left:
                self.writer.write(block)
                self.left -= len(block)
            else:
                self.writer.finish()
                self.writer = None
            self.buffer += b"".join(self.out)
            self.out.clear()
        piece, self.buffer = self.buffer[:size], self.buffer[size:]
        return piece

if sys.argv[1] == "encrypt":
    base = hwm()
    writer = AgeWriter(Null(), EncryptionKey(recipients=(public,)))
    for _ in range(total >> 20):
        writer.write(block)
    writer.finish()
else:
    source = Ciphertext()
    base = hwm()
    reader = age_reader(source, DecryptionKey(identities=(identity,)))
    seen = 0
    while got := reader.read(1 << 20):
        seen += len(got)
    assert seen == total, seen
print(hwm() - base)
"""


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_memory_stays_bounded(direction: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-c", MEMORY_PROBE, direction, "512"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.strip())
    assert growth < 64 * 1024 * 1024, f"peak RSS grew {growth / 2**20:.0f} MiB for 512 MiB"
