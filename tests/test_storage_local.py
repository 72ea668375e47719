"""The storage contract on local disk: atomic put, nothing partial visible, clear failures."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.errors import StorageError, StorageFull
from safehold.storage import LocalStorage


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB filesystem, so "disk full" is the kernel's ENOSPC, not a simulation."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def visible(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.root.iterdir())


def test_commit_makes_the_object_visible_atomically(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.ensure()
    with storage.open_writer("a.bin") as writer:
        writer.write(b"hello ")
        assert not storage.exists("a.bin")  # not under its name until committed
        writer.write(memoryview(b"world"))
    assert storage.read_bytes("a.bin") == b"hello world"
    assert (storage.path("a.bin").stat().st_mode & 0o777) == 0o600
    assert (storage.root.stat().st_mode & 0o777) == 0o700
    assert visible(storage) == ["a.bin"]


def test_an_exception_aborts_and_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.ensure()
    with pytest.raises(RuntimeError), storage.open_writer("b.bin") as writer:
        writer.write(b"partial")
        raise RuntimeError("source failed")
    assert visible(storage) == []


def test_put_replaces_and_delete_is_idempotent(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("dir/k.json", b"1")
    storage.put_bytes("dir/k.json", b"2")
    assert storage.read_bytes("dir/k.json") == b"2"
    assert storage.list("dir") == ["dir/k.json"]
    storage.delete("dir/k.json")
    storage.delete("dir/k.json")
    assert not storage.exists("dir/k.json")


def test_missing_keys_raise_file_not_found(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.ensure()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("nope")
    with pytest.raises(FileNotFoundError):
        storage.size("nope")
    assert storage.list("nothing-here") == []


def test_list_is_sorted_and_one_level(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    for key in ("c", "a", "b", "sub/x"):
        storage.put_bytes(key, b"")
    assert storage.list() == ["a", "b", "c"]


def test_every_folder_a_deep_key_creates_is_private_whatever_the_umask(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    previous = os.umask(0o022)
    try:
        storage.put_bytes(".safehold/journal/done/entry.json", b"{}")
    finally:
        os.umask(previous)
    deepest = storage.root / ".safehold/journal/done"
    made = [deepest, *deepest.parents][:4]  # done, journal, .safehold, the root
    assert {oct(folder.stat().st_mode & 0o777) for folder in made} == {"0o700"}, made


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    for key in ("../evil", "/etc/passwd", "a/../../b"):
        with pytest.raises(StorageError):
            storage.path(key)


def test_disk_full_is_a_clear_error_and_removes_the_partial(small_fs: Path) -> None:
    storage = LocalStorage(small_fs)
    storage.put_bytes("keep.bin", b"k" * 1000)
    with pytest.raises(StorageFull) as caught, storage.open_writer("big.bin") as writer:
        for _ in range(100):
            writer.write(os.urandom(64 * 1024))
    assert "no space" in caught.value.message
    assert caught.value.hint
    assert visible(storage) == ["keep.bin"]
    assert storage.read_bytes("keep.bin") == b"k" * 1000


def test_stale_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.ensure()
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale = storage.root / f".x.sql.partial-{proc.pid}-abcd"
    live = storage.root / f".y.sql.partial-{os.getpid()}-abcd"
    stale.write_bytes(b"x")
    live.write_bytes(b"y")
    assert storage.remove_stale_partials() == [stale.name]
    assert live.exists() and not stale.exists()


def test_link_points_at_target_and_is_replaced(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("one", b"1")
    storage.put_bytes("two", b"2")
    storage.link("latest", "one")
    storage.link("latest", "two")
    assert storage.path("latest").is_symlink()
    assert os.readlink(storage.path("latest")) == "two"
    assert storage.read_bytes("latest") == b"2"
