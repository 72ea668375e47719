"""The chunk store's whole-buffer age decryption: what ``age_reader`` (rage) gives, faster.

Files come from the real ``age`` CLI, pyrage and our writer; every damaged or cut file must be
refused by the fast path (never plaintext) and then explained as ``age_reader`` explains it.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from safehold.crypto.age import age_reader
from safehold.crypto.age_open import _open, _Slow, open_age
from safehold.crypto.age_writer import AgeWriter
from safehold.crypto.keys import DecryptionKey, EncryptionKey, generate_keypair
from safehold.errors import SafeholdError

CHUNK = 64 * 1024
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, (1 << 20) + 5]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, DecryptionKey]:
    folder = tmp_path_factory.mktemp("keys")
    public = generate_keypair(folder / "identity.txt")
    identity = (folder / "identity.txt").read_text().splitlines()[-1]
    return folder / "identity.txt", public, DecryptionKey(identities=(identity,))


def ours(data: bytes, *recipients: str) -> bytes:
    sink = io.BytesIO()
    with AgeWriter(sink, EncryptionKey(recipients=recipients)) as writer:
        writer.write(data)
        writer.finish()
    return sink.getvalue()


def age_cli(data: bytes, *recipients: str, armor: bool = False) -> bytes:
    found = shutil.which("age")
    if found is None:  # never a skip: scripts/install-deps.sh installs it
        pytest.fail("the age CLI is missing: run scripts/install-deps.sh", pytrace=False)
    argv = [found, *(["-a"] if armor else []), *(a for r in recipients for a in ("-r", r))]
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def slow(blob: bytes, key: DecryptionKey) -> bytes:
    with age_reader(io.BytesIO(blob), key) as reader:
        return reader.read()


@pytest.mark.parametrize("size", SIZES)
def test_files_of_the_age_cli_and_ours_open_on_the_fast_path(
    keys: tuple[Path, str, DecryptionKey], size: int
) -> None:
    _, public, key = keys
    other = generate_keypair(keys[0].parent / f"other-{size}.txt")
    data = random.Random(size).randbytes(size)
    for blob in (ours(data, public), age_cli(data, other, public), ours(data, other, public)):
        assert _open(blob, key) == data  # the fast path itself, not the fallback
        assert open_age(blob, key) == slow(blob, key) == data


def test_an_armored_file_falls_back_and_opens(keys: tuple[Path, str, DecryptionKey]) -> None:
    _, public, key = keys
    data = os.urandom(3 * CHUNK + 7)
    blob = age_cli(data, public, armor=True)
    with pytest.raises(_Slow):
        _open(blob, key)
    assert open_age(blob, key) == data


def test_every_damaged_or_cut_file_is_refused_as_age_reader_refuses_it(
    keys: tuple[Path, str, DecryptionKey],
) -> None:
    _, public, key = keys
    blob = age_cli(os.urandom(5 * CHUNK + 123), public)
    rng = random.Random(16)
    header = blob.index(b"\n---") + 60
    flips = [*range(0, header, 3), *(rng.randrange(len(blob)) for _ in range(150))]
    cuts = [0, 10, header, header + 16, header + 40, *(rng.randrange(len(blob)) for _ in range(50))]
    damaged = [_flip(blob, at) for at in flips] + [blob[:at] for at in cuts]
    damaged.append(blob + b"\x00" * 16)  # data after the last chunk
    for bad in damaged:
        with pytest.raises(_Slow):
            _open(bad, key)
        with pytest.raises(SafeholdError) as fast:
            open_age(bad, key)
        with pytest.raises(SafeholdError) as reference:
            slow(bad, key)
        assert (type(fast.value), fast.value.message) == (
            type(reference.value),
            reference.value.message,
        )


def test_a_key_that_opens_no_stanza_gets_age_readers_explanation(
    keys: tuple[Path, str, DecryptionKey], tmp_path: Path
) -> None:
    _, public, _key = keys
    stranger = generate_keypair(tmp_path / "stranger.txt")
    identity = (tmp_path / "stranger.txt").read_text().splitlines()[-1]
    blob = ours(os.urandom(100), public)
    wrong = DecryptionKey(identities=(identity,), source="stranger.txt")
    with pytest.raises(SafeholdError) as fast:
        open_age(blob, wrong)
    with pytest.raises(SafeholdError) as reference:
        slow(blob, wrong)
    assert fast.value.message == reference.value.message and stranger in fast.value.message


def _flip(blob: bytes, at: int) -> bytes:
    copy = bytearray(blob)
    copy[at] ^= 0x04
    return bytes(copy)
