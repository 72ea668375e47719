"""The chunk store under kill -9, concurrent writers and locks, on local disk and S3.

A writer is a child process killed at a few points of a large stream: before its first pack,
after some packs, and between its index object and its snapshot (the commit point, delayed on
purpose there). Whatever it left, the next open lists no snapshot of it, a prune with grace 0
removes every leftover, and the snapshots made before still restore byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.chunkstore import ChunkStore
from safehold.chunkstore.index import list_index_names
from safehold.chunkstore.inventory import stored_packs
from safehold.chunkstore.layout import LOCKS, ROOT, index_key, lock_key, new_name
from safehold.chunkstore.locks import StoreLock, read_locks
from safehold.errors import LockBusy
from safehold.storage import LocalStorage, S3Storage
from safehold.storage.base import Storage
from safehold.storage.local import PARTIAL_MARK

from .test_chunkstore_core import (
    MIB,
    Keys,
    backup,
    keys,
    new_store,
    random_bytes,
    reader_of,
    restore,
    s3_bucket,
    storage,
)

__all__ = ["keys", "s3_bucket", "storage"]  # fixtures shared with the core tests

CHILD = r"""
import json, random, sys, time
from datetime import timedelta
from pathlib import Path
from safehold.chunkstore import ChunkStore, HostKey
from safehold.storage import LocalStorage, S3Storage

args = json.loads(sys.argv[1])
spec = args["storage"]
if spec["kind"] == "local":
    storage = LocalStorage(Path(spec["root"]))
else:
    storage = S3Storage(spec["endpoint"], spec["bucket"], spec["prefix"], access_key_id=spec["key"],
                        secret_access_key=spec["secret"], region="us-east-1")

class Paused:
    # The same storage; the first call of one kind on one prefix ("put:chunks/snapshots/")
    # says so and waits there, so the parent's kill -9 lands exactly at that step.
    def __init__(self, inner, at):
        self.inner, self.at = inner, at
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def _step(self, action, key):
        if self.at and f"{action}:{key}".startswith(self.at):
            self.at = None
            print("paused", flush=True)
            time.sleep(60)
    def put_bytes(self, key, data):
        self._step("put", key)
        return self.inner.put_bytes(key, data)
    def delete(self, key):
        self._step("delete", key)
        return self.inner.delete(key)

class Source:
    def __init__(self, size, pause):
        self.left, self.pause, self.rng = size, pause, random.Random(args["seed"])
    def read(self, n):
        n = min(n, self.left, 256 * 1024)
        self.left -= n
        time.sleep(self.pause)
        return self.rng.randbytes(n)

if args.get("pause_at"):
    storage = Paused(storage, args["pause_at"])
store = ChunkStore.open(storage, host_key=HostKey.load(Path(args["key"])))
if args.get("prune"):
    print(store.prune(grace=timedelta(0)), flush=True)
    sys.exit(0)
with store.writer("victim", "stream") as writer:
    if args.get("hold"):
        print("holding", flush=True)
        sys.stdin.read()
    writer.put_stream(Source(args["size"], args["pause"]))
    writer.commit({})
print("done", flush=True)
"""


def spec_of(storage: Storage) -> dict[str, Any]:
    if isinstance(storage, LocalStorage):
        return {"kind": "local", "root": str(storage.root)}
    assert isinstance(storage, S3Storage)
    settings = storage.settings
    return {
        "kind": "s3",
        "endpoint": settings.endpoint_url,
        "bucket": storage.bucket,
        "prefix": storage.prefix,
        "key": settings.access_key_id,
        "secret": settings.secret_access_key,
    }


def child(storage: Storage, keys: Keys, **options: Any) -> subprocess.Popen[str]:
    args = {"storage": spec_of(storage), "key": str(keys.host_path), "seed": 99, **options}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, f"the writer ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def leftovers(storage: Storage) -> list[str]:
    """Partial uploads: temp files on disk, unfinished multipart uploads on S3."""
    if isinstance(storage, LocalStorage):
        return [p.name for p in (storage.root / ROOT).rglob("*") if PARTIAL_MARK in p.name]
    assert isinstance(storage, S3Storage)
    return [u.key for u in storage.pending_uploads() if u.key.startswith(f"{ROOT}/")]


POINTS = ["before-any-pack", "after-some-packs", "between-index-and-snapshot"]


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_writer_leaves_nothing_a_prune_keeps(
    storage: Storage, keys: Keys, point: str
) -> None:
    store = new_store(storage, keys)
    kept_data = random_bytes(2 * MIB, 1)
    kept = backup(store, kept_data, "kept")
    packs, indexes = stored_packs(storage), set(list_index_names(storage))
    slow = point == "between-index-and-snapshot"
    proc = child(storage, keys, size=(8 if slow else 64) * MIB, pause=0 if slow else 0.01,
                 pause_at="put:chunks/snapshots/" if slow else None)  # fmt: skip
    try:
        if point == "before-any-pack":
            wait_for(lambda: bool(read_locks(storage)), proc, "the writer's lock")
        elif point == "after-some-packs":
            wait_for(lambda: len(stored_packs(storage) - packs) >= 4, proc, "four packs")
        else:
            assert proc.stdout is not None and proc.stdout.readline() == "paused\n"
            assert set(list_index_names(storage)) != indexes  # its index is there
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if point == "after-some-packs":
        assert len(stored_packs(storage) - packs) >= 4
    again = ChunkStore.open(storage, host_key=keys.host, decryption=keys.decryption)
    assert [s.id for s in again.snapshots()] == [kept]
    report = again.prune(grace=timedelta(0))
    assert report.removed_locks  # the dead writer's, stale at once (its pid is gone)
    assert stored_packs(storage) == packs
    assert storage.list(LOCKS) == [] and leftovers(storage) == []
    assert len(list_index_names(storage)) == 1
    assert restore(reader_of(storage, keys), kept) == kept_data
    assert again.verify(read_data=1.0).errors == []


def test_two_writers_at_once_both_commit_and_restore(storage: Storage, keys: Keys) -> None:
    new_store(storage, keys)
    common = random_bytes(2 * MIB, 2)
    datas = [common + random_bytes(3 * MIB, 3), random_bytes(1 * MIB, 4) + common]
    both_in = threading.Barrier(2, timeout=30)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    class Source:
        def __init__(self, data: bytes) -> None:
            self.stream, self.first = io.BytesIO(data), True

        def read(self, size: int = -1) -> bytes:
            if self.first:  # both writers hold their shared lock and are mid-stream
                self.first = False
                both_in.wait()
                assert len(storage.list(LOCKS)) == 2
            return self.stream.read(min(size, 128 * 1024))

    def run(number: int) -> None:
        try:
            store = ChunkStore.open(storage, host_key=keys.host)
            with store.writer(f"w{number}", "stream") as writer:
                ids = writer.put_stream(Source(datas[number]))
                info = writer.commit({"chunks": [i.hex() for i in ids]})
            results[number] = info.id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 2
    reader = reader_of(storage, keys)
    assert [restore(reader, results[n]) for n in (0, 1)] == datas
    assert len(list_index_names(storage)) == 2 and storage.list(LOCKS) == []
    store = ChunkStore.open(storage, host_key=keys.host, decryption=keys.decryption)
    store.forget([results[0]])
    store.prune(grace=timedelta(0))  # the common part, stored twice, survives once
    assert restore(reader_of(storage, keys), results[1]) == datas[1]


def test_prune_refuses_while_another_writer_holds_a_fresh_lock(
    storage: Storage, keys: Keys
) -> None:
    store = new_store(storage, keys)
    proc = child(storage, keys, size=1 * MIB, pause=0, hold=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
        with pytest.raises(LockBusy) as caught:
            store.prune(grace=timedelta(0))
        assert "shared lock of pid" in caught.value.message and caught.value.hint
        assert len(storage.list(LOCKS)) == 1  # prune took its own record back
        data = random_bytes(1 * MIB, 5)
        snapshot_id = backup(store, data)  # backups share the store
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    report = store.prune(grace=timedelta(0))  # its holder is gone: stale at once
    assert len(report.removed_locks) == 1 and storage.list(LOCKS) == []
    assert restore(store, snapshot_id) == data


def test_backups_refuse_while_prune_holds_the_store(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    with StoreLock(storage, "exclusive"):
        with pytest.raises(LockBusy, match="cannot back up"):
            store.writer("db", "stream")
        assert len(storage.list(LOCKS)) == 1
    assert storage.list(LOCKS) == []
    backup(store, b"after the prune")


def test_a_lock_of_another_host_goes_stale_by_the_storage_clock(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    store = new_store(storage, keys)
    record = {"kind": "shared", "host": "elsewhere", "pid": 1, "time": "2020-01-01T00:00:00+00:00",
              "refreshed": "2020-01-01T00:00:00+00:00", "ttl": 600}  # fmt: skip
    key = lock_key(new_name())
    storage.put_bytes(key, json.dumps(record).encode())  # just written: fresh whatever it says
    with pytest.raises(LockBusy, match="on elsewhere"):
        store.prune(grace=timedelta(0))
    old = time.time() - 601
    os.utime(storage.path(key), (old, old))
    assert store.prune(grace=timedelta(0)).removed_locks == [key.rsplit("/", 1)[1]]


def test_a_long_backup_keeps_its_lock_fresh(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    new_store(storage, keys)
    ttl = timedelta(seconds=0.6)
    store = ChunkStore.open(storage, host_key=keys.host, lock_ttl=ttl)
    with store.writer("slow", "stream") as writer:
        first = storage.list(LOCKS)
        time.sleep(1.5)  # more than two ttls: refreshed (a new object each time) meanwhile
        assert storage.list(LOCKS) != first and len(storage.list(LOCKS)) == 1
        with pytest.raises(LockBusy):
            ChunkStore.open(storage, host_key=keys.host).prune(grace=timedelta(0))
        writer.put_stream(io.BytesIO(random_bytes(1 * MIB, 6)))
        writer.commit({})
    assert storage.list(LOCKS) == []


def test_an_aborted_writer_removes_its_packs(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    with pytest.raises(RuntimeError), store.writer("db", "stream") as writer:
        writer.put_stream(io.BytesIO(random_bytes(4 * MIB, 7)))
        raise RuntimeError("the source failed")
    assert stored_packs(storage) == set() and store.snapshots() == []
    assert storage.list(LOCKS) == [] and list_index_names(storage) == []


def forgotten_half(storage: Storage, keys: Keys) -> tuple[ChunkStore, str, bytes]:
    """A store with one snapshot kept and one forgotten: prune has packs to delete."""
    store = new_store(storage, keys)
    kept_data = random_bytes(2 * MIB, 8)
    kept = backup(store, kept_data, "kept")
    store.forget([backup(store, random_bytes(3 * MIB, 9), "gone")])
    return store, kept, kept_data


@pytest.mark.parametrize("pause_at", ["delete:chunks/index/", "delete:chunks/packs/"])
def test_a_killed_prune_is_harmless_and_the_next_one_finishes(
    storage: Storage, keys: Keys, pause_at: str
) -> None:
    store, kept, kept_data = forgotten_half(storage, keys)
    proc = child(storage, keys, prune=True, pause_at=pause_at)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "paused\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed after its new index: the old ones are superseded whether deleted or not
    assert len(list_index_names(storage)) == (3 if "index" in pause_at else 1)
    assert store.verify(read_data=1.0).errors == []
    assert restore(reader_of(storage, keys), kept) == kept_data
    report = store.prune(grace=timedelta(0))
    assert report.removed_packs and report.removed_locks
    assert len(list_index_names(storage)) == 1 and storage.list(LOCKS) == []
    final = store.verify(read_data=1.0)
    assert (final.errors, final.unindexed_packs) == ([], [])
    assert restore(reader_of(storage, keys), kept) == kept_data


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """Files the file system refuses to delete (chattr +i), as a bucket's retention would."""
    try:
        subprocess.run(["chattr", "+i", *map(str, paths)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        # Never a skip: scripts/install-deps.sh installs chattr, and CI runs as root on ext4.
        pytest.fail(f"this file system or user cannot make files immutable: {exc}", pytrace=False)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def test_a_refused_delete_is_kept_and_reported(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    store, kept, kept_data = forgotten_half(storage, keys)
    packs_before = stored_packs(storage)
    old = list_index_names(storage)  # the forgotten snapshot's names the packs that go
    with immutable([storage.path(index_key(name)) for name in old]):
        report = store.prune(grace=timedelta(0))
        assert report.refused == [index_key(n) for n in old] and report.removed_packs
        assert stored_packs(storage) < packs_before
        # the refused index object names deleted packs, but the new index supersedes it
        assert store.verify(read_data=1.0).errors == []
        assert restore(reader_of(storage, keys), kept) == kept_data
        backup(store, kept_data, "again")  # dedups against live packs only
    later = store.prune(grace=timedelta(0))
    assert later.refused == [] and set(old) <= set(later.removed_indexes)
    assert len(list_index_names(storage)) == 1
    assert restore(reader_of(storage, keys), kept) == kept_data


def test_a_writer_that_could_not_refresh_its_lock_commits_nothing(
    tmp_path: Path, keys: Keys
) -> None:
    storage = LocalStorage(tmp_path / "repo")
    new_store(storage, keys)
    store = ChunkStore.open(storage, host_key=keys.host, lock_ttl=timedelta(seconds=0.4))
    with pytest.raises(LockBusy, match="not refreshed"), store.writer("db", "stream") as writer:
        writer.put_stream(io.BytesIO(random_bytes(1 * MIB, 10)))
        with immutable([storage.path(LOCKS)]):  # the lock folder cannot be written: no refresh
            time.sleep(1.0)
            writer.commit({})
    assert store.snapshots() == [] and list_index_names(storage) == []
    assert stored_packs(storage) == set()
