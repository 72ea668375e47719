"""One storage contract, every backend: local disk and S3 (a real SeaweedFS on loopback).

Each test runs once per backend. What differs between them is only how leftovers of a failed
upload look (a temp file / an unfinished multipart upload) and how they are cleaned up.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from safehold.errors import StorageError
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage, S3Storage, Storage
from safehold.storage.local import PARTIAL_MARK

MIB = 1024 * 1024
PART = 5 * MIB  # the S3 minimum, so a few MiB already make a real multipart upload
PAGE = 50  # S3 list page size here: 130 keys are three pages


@dataclass
class Backend:
    name: str
    storage: Storage
    leftovers: Callable[[], list[str]]  # what a failed upload may leave (never under its key)
    clean: Callable[[], list[str]]  # the backend's cleanup of those leftovers
    spec: dict[str, str]  # how a child process opens the same repository


@pytest.fixture(scope="module")
def s3_bucket(s3: SandboxS3) -> str:
    return s3.bucket()


def local_backend(root: Path) -> Backend:
    storage = LocalStorage(root)
    storage.ensure()
    return Backend(
        "local",
        storage,
        leftovers=lambda: sorted(p.name for p in root.rglob("*") if PARTIAL_MARK in p.name),
        clean=storage.remove_stale_partials,
        spec={"kind": "local", "root": str(root)},
    )


def s3_backend(server: SandboxS3, bucket: str) -> Backend:
    prefix = f"host-{secrets.token_hex(4)}/repo"
    storage = server.storage(bucket, prefix, part_size=PART, list_page_size=PAGE)
    return Backend(
        "s3",
        storage,
        leftovers=lambda: sorted(u.key for u in storage.pending_uploads()),
        clean=lambda: storage.abort_stale_uploads(older_than=timedelta(0)),
        spec={
            "kind": "s3",
            "endpoint": server.endpoint,
            "bucket": bucket,
            "prefix": prefix,
            "key": server.access_key,
            "secret": server.secret_key,
        },
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.service)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "repo")
    # Only the S3 cases start the server: ``-k local`` needs no SeaweedFS.
    server: SandboxS3 = request.getfixturevalue("s3")
    return s3_backend(server, request.getfixturevalue("s3_bucket"))


def test_missing_keys(backend: Backend) -> None:
    storage = backend.storage
    for call in (storage.read_bytes, storage.size, storage.open_reader):
        with pytest.raises(FileNotFoundError):
            call("db_backup_20240101_000000.sql")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(".safehold/manifests/nope.json")
    assert not storage.exists("nope")
    assert storage.list() == []
    assert storage.list("nothing-here") == []
    assert storage.local_path("x") is None or backend.name == "local"


def test_a_write_is_invisible_until_commit(backend: Backend) -> None:
    storage = backend.storage
    data = os.urandom(12 * MIB + 123)  # two full parts and a short last one on S3
    with storage.open_writer("db_backup_20240101_000000.sql") as writer:
        for start in range(0, len(data), MIB):
            writer.write(data[start : start + MIB])
            assert not storage.exists("db_backup_20240101_000000.sql")
            assert "db_backup_20240101_000000.sql" not in storage.list()
        with pytest.raises(FileNotFoundError):
            storage.open_reader("db_backup_20240101_000000.sql")
    assert storage.read_bytes("db_backup_20240101_000000.sql") == data
    assert storage.size("db_backup_20240101_000000.sql") == len(data)
    assert backend.leftovers() == []


def test_a_replacement_keeps_the_old_content_until_commit(backend: Backend) -> None:
    storage = backend.storage
    storage.put_bytes(".safehold/manifests/a.json", b'{"v": 1}')
    new = os.urandom(11 * MIB)
    with storage.open_writer(".safehold/manifests/a.json") as writer:
        writer.write(new[: 6 * MIB])
        assert storage.read_bytes(".safehold/manifests/a.json") == b'{"v": 1}'
        writer.write(memoryview(new)[6 * MIB :])
        assert storage.read_bytes(".safehold/manifests/a.json") == b'{"v": 1}'
    assert storage.read_bytes(".safehold/manifests/a.json") == new


def test_put_bytes_replaces_and_delete_is_idempotent(backend: Backend) -> None:
    storage = backend.storage
    storage.put_bytes("dir/k.json", b"1")
    storage.put_bytes("dir/k.json", b"2")
    assert storage.read_bytes("dir/k.json") == b"2"
    assert storage.list("dir") == ["dir/k.json"]
    storage.delete("dir/k.json")
    storage.delete("dir/k.json")
    storage.delete("never-was-there")
    assert not storage.exists("dir/k.json")
    assert storage.list("dir") == []


def test_an_empty_object_round_trips(backend: Backend) -> None:
    with backend.storage.open_writer("empty") as writer:
        writer.write(b"")
    assert backend.storage.read_bytes("empty") == b""
    assert backend.storage.size("empty") == 0


def test_list_is_sorted_one_level_and_folder_shaped(backend: Backend) -> None:
    storage = backend.storage
    keys = [
        "c",
        "a",
        "B",
        "b-1",
        "b_1",
        "b.1",
        "sub/x",
        "sub/deeper/y",
        ".safehold/manifests/m.json",
    ]
    for key in keys:
        storage.put_bytes(key, key.encode())
    assert storage.list() == sorted(["c", "a", "B", "b-1", "b_1", "b.1"])
    assert storage.list("sub") == ["sub/x"]
    assert storage.list("sub/") == ["sub/x"]
    assert storage.list("sub/deeper") == ["sub/deeper/y"]
    assert storage.list(".safehold/manifests") == [".safehold/manifests/m.json"]
    assert storage.list("su") == []  # a folder, not a name prefix


def test_list_paginates(backend: Backend) -> None:
    storage = backend.storage
    names = [f"volume_v{n:03d}_20240101_000000.tar.gz" for n in range(130)]
    for name in reversed(names):
        storage.put_bytes(name, b"")
    assert storage.list() == names  # 3 pages of 50 on S3


def test_an_exception_inside_with_aborts_and_leaves_nothing(backend: Backend) -> None:
    storage = backend.storage
    with pytest.raises(RuntimeError), storage.open_writer("x.sql") as writer:
        writer.write(os.urandom(11 * MIB))  # two parts already sent on S3
        raise RuntimeError("the source failed")
    assert not storage.exists("x.sql")
    assert storage.list() == []
    assert backend.leftovers() == []  # S3: no unfinished multipart upload either


def test_an_explicit_abort_leaves_nothing(backend: Backend) -> None:
    storage = backend.storage
    storage.put_bytes("x.sql", b"old")
    writer = storage.open_writer("x.sql")
    writer.write(os.urandom(7 * MIB))
    writer.abort()
    assert storage.read_bytes("x.sql") == b"old"
    assert backend.leftovers() == []


def test_a_large_object_round_trips_by_sha256(backend: Backend) -> None:
    storage = backend.storage
    data = os.urandom(40 * MIB)
    started = time.perf_counter()
    with storage.open_writer("big.bin") as writer:
        step = 1 * MIB + 7  # odd sizes: parts never line up with writes
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
    upload = time.perf_counter() - started
    started = time.perf_counter()
    digest = hashlib.sha256()
    buffer = bytearray(256 * 1024 + 3)
    with storage.open_reader("big.bin") as reader:
        assert isinstance(reader, io.BufferedIOBase)  # read, readinto, read1...
        while count := reader.readinto(buffer):
            digest.update(buffer[:count])
    download = time.perf_counter() - started
    print(f"{backend.name}: 40 MiB up {40 / upload:.0f} MiB/s, down {40 / download:.0f} MiB/s")
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.size("big.bin") == len(data)


def test_reads_stream_in_pieces(backend: Backend) -> None:
    data = os.urandom(3 * MIB + 5)
    backend.storage.put_bytes("piece.bin", data)
    with backend.storage.open_reader("piece.bin") as reader:
        assert reader.read(10) == data[:10]
        assert reader.read(MIB) == data[10 : MIB + 10]
        assert reader.read() == data[MIB + 10 :]
        assert reader.read() == b""


def test_keys_cannot_escape_the_repository(backend: Backend) -> None:
    for key in ("../evil", "/etc/passwd", "a/../../b"):
        with pytest.raises(StorageError):
            backend.storage.exists(key)


CHILD_WRITER = """
import json, sys, time
from safehold.storage import LocalStorage, S3Storage
spec = json.loads(sys.argv[1])
if spec["kind"] == "local":
    storage = LocalStorage(spec["root"])
else:
    storage = S3Storage(spec["endpoint"], spec["bucket"], spec["prefix"],
                        access_key_id=spec["key"], secret_access_key=spec["secret"],
                        part_size=5 * 1024 * 1024, concurrency=1)
writer = storage.open_writer("killed.sql")
writer.write(b"x" * (11 * 1024 * 1024))
print("written", flush=True)
time.sleep(120)
"""


def test_a_writer_killed_mid_upload_leaves_nothing_visible(backend: Backend) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, json.dumps(backend.spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    storage = backend.storage
    assert not storage.exists("killed.sql")
    assert "killed.sql" not in storage.list()
    assert backend.leftovers() != []  # a temp file / an unfinished upload, never the object
    assert backend.clean() != []
    assert backend.leftovers() == []
    assert not storage.exists("killed.sql")


def test_both_backends_are_storages() -> None:
    """mypy checks this assignment: S3Storage and LocalStorage follow the Storage protocol."""
    backends: list[type[Storage]] = [LocalStorage, S3Storage]
    assert len(backends) == 2
