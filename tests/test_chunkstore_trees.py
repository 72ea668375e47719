"""Folder trees in the chunk store: backup, restore (all and --include), ls, files cache, and
hostile trees, on real files in a real local store (run as root: owners are kept).

Trees are compared entry by entry: content hash, mode, numeric owner, mtime to the nanosecond,
symlink target, hardlink group, and holes (allocated blocks) for sparse files.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
import zstandard

from safehold.chunkstore import ChunkStore, HostKey
from safehold.chunkstore.trees import backup_tree, list_tree, restore_tree
from safehold.chunkstore.trees.entries import DIR, FILE, HARDLINK, SYMLINK, Entry, decode_lines
from safehold.chunkstore.trees.entries import encode_lines as encode
from safehold.chunkstore.trees.plan import make_plan
from safehold.chunkstore.trees.treeblobs import FORMAT
from safehold.crypto import DecryptionKey, EncryptionKey
from safehold.crypto.keys import generate_keypair
from safehold.errors import IntegrityError, RestoreError, StorageFull, UsageError
from safehold.model import ByteSource, Event
from safehold.storage import LocalStorage

from . import tree_support
from .mounts import tmpfs
from .tree_support import Tree

MiB = 1 << 20
SMALL_CHUNKS = (16 << 10, 64 << 10, 256 << 10)  # many chunks per test file


# ---- a real store --------------------------------------------------------------------------


def make_store(base: Path, pack_size: int = 1 * MiB) -> ChunkStore:
    """A new store in ``base``, opened as a host that also holds the identity."""
    identity_file = base / "identity.txt"
    recipient = generate_keypair(identity_file)
    identity = identity_file.read_text().splitlines()[-1]
    storage = LocalStorage(base / "repo")
    host = HostKey.generate(base / "id-key")
    ChunkStore.init(
        storage, host, EncryptionKey(recipients=(recipient,)), pack_size=pack_size,
        chunk_sizes=SMALL_CHUNKS,
    )  # fmt: skip
    return ChunkStore.open(storage, host_key=host, decryption=DecryptionKey(identities=(identity,)))


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return make_store(tmp_path / "store")


# ---- trees on disk ---------------------------------------------------------------------------


def snapshot(root: Path) -> Tree:
    """Every entry below root (and root as '.'), without following symlinks, to the ns."""
    return tree_support.snapshot(root, exact=True)


def make_tree(root: Path) -> None:
    """What a volume holds: owners, modes, ns mtimes, links, holes, odd names, empty folders."""
    tree_support.make_tree(
        root, _own_files, long_text="long names\n", steps=(7_000_000_001, 3_000_000_003)
    )


def _own_files(root: Path) -> None:
    (root / "docs" / "deep" / "copy.bin").write_bytes((root / "docs/deep/big.bin").read_bytes())
    (root / "docs" / "rep.bin").write_bytes(os.urandom(200_000) * 4)  # repeats inside a file
    with open(root / "sparse.img", "wb") as out:  # data, hole, data, hole at the end
        out.write(os.urandom(100_000))
        out.seek(5 * MiB)
        out.write(os.urandom(300_000))
        out.truncate(20 * MiB)
    with open(root / "holes-only.img", "wb") as out:
        out.truncate(8 * MiB)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    make_tree(root)
    return root


# ---- round trips -------------------------------------------------------------------------------


def test_round_trip_keeps_everything_to_the_nanosecond(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    found: list[Event] = []
    info = backup_tree(store, source, "vol", events=found.append)
    assert not found
    dest = tmp_path / "restored"
    facts = restore_tree(store, info.id, dest)

    assert snapshot(dest) == snapshot(source)
    assert os.lstat(dest / "hard-a").st_ino == os.lstat(dest / "docs/a.txt").st_ino
    sparse = os.lstat(dest / "sparse.img")
    assert sparse.st_size == 20 * MiB and sparse.st_blocks * 512 < 2 * MiB  # holes stay holes
    assert os.lstat(dest / "holes-only.img").st_blocks == 0
    assert facts.hardlinks == 2 and facts.symlinks == 4 and facts.dirs == 7
    assert info.stats["files"] == facts.files == 12
    # The copy of big.bin and the repeats inside rep.bin are stored once.
    assert info.stats["new_bytes"] < info.stats["bytes"] - 3 * MiB
    assert [p.name for p in tmp_path.iterdir() if "safehold" in p.name] == []


def test_restore_into_an_empty_folder_and_refusals(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    info = backup_tree(store, source, "vol")
    empty = tmp_path / "empty-dest"
    empty.mkdir()
    restore_tree(store, info.id, empty)
    assert snapshot(empty) == snapshot(source)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    before = snapshot(busy)
    with pytest.raises(UsageError, match="not empty"):
        restore_tree(store, info.id, busy)
    assert snapshot(busy) == before
    file_dest = tmp_path / "a-file"
    file_dest.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        restore_tree(store, info.id, file_dest)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_restore_into_an_empty_mount_point_keeps_the_mount(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    info = backup_tree(store, source, "vol")
    with tmpfs(tmp_path / "mnt", size="64m") as mount:
        device = os.stat(mount).st_dev
        restore_tree(store, info.id, mount)  # a mount point cannot be renamed over
        assert os.path.ismount(mount) and os.stat(mount).st_dev == device
        assert snapshot(mount) == snapshot(source)


def test_a_tree_bigger_than_the_free_space_is_refused_before_writing(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    info = backup_tree(store, source, "vol")
    with tmpfs(tmp_path / "small", size="2m") as mount:
        with pytest.raises(StorageFull, match="only"):
            restore_tree(store, info.id, mount)
        assert os.listdir(mount) == []
        # Only what fits: one small file is fine.
        restore_tree(store, info.id, mount, include="docs/a.txt")
        assert (mount / "docs" / "a.txt").read_text() == "alpha\n"


def test_list_tree(store: ChunkStore, source: Path) -> None:
    info = backup_tree(store, source, "vol")
    every = list_tree(store, info.id)
    assert every[0]["path"] == "." and every[0]["type"] == "dir"
    names = [item["path"] for item in every]
    assert names.index("docs") < names.index("docs/a.txt") < names.index("docs/deep")
    assert len(names) == len(snapshot(source))
    by_name = {item["path"]: item for item in every}
    assert by_name["hard-a"]["type"] == "hardlink" and by_name["hard-a"]["link"] == "docs/a.txt"
    assert by_name["link-dir"] == {**by_name["link-dir"], "type": "symlink", "link": "docs"}
    assert by_name["secret"]["uid"] == 1234 and by_name["secret"]["mode"] == 0o600
    assert by_name["sparse.img"]["size"] == 20 * MiB and by_name["sparse.img"]["sparse"]
    below = [item["path"] for item in list_tree(store, info.id, "docs", recursive=False)]
    assert below == ["docs", "docs/a.txt", "docs/deep", "docs/empty.bin", "docs/rep.bin"]
    deep = [item["path"] for item in list_tree(store, info.id, "/docs/deep/")]
    assert deep == [
        "docs/deep", "docs/deep/big.bin", "docs/deep/copy.bin", "docs/deep/hard-a2",
        "docs/deep/link-up",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="has no"):
        list_tree(store, info.id, "nope")


def test_include_restores_one_path_with_its_folders(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    info = backup_tree(store, source, "vol")
    one = tmp_path / "one"
    facts = restore_tree(store, info.id, one, include="docs/deep/big.bin")
    assert facts.files == 1
    whole = snapshot(source)
    got = snapshot(one)
    assert sorted(got) == [".", "./docs", "./docs/deep", "./docs/deep/big.bin"]
    assert got["./docs/deep/big.bin"] == whole["./docs/deep/big.bin"]
    assert got["./docs"][1:4] == whole["./docs"][1:4]  # the folder's mode and owner

    part = tmp_path / "part"
    restore_tree(store, info.id, part, include="docs/deep")
    got = snapshot(part)
    assert {k for k in got if k.startswith("./docs/deep/")} == {
        k for k in whole if k.startswith("./docs/deep/")
    }
    # hard-a2 linked to docs/a.txt, outside the part: it comes back as that file's content.
    assert got["./docs/deep/hard-a2"][0] == whole["./docs/a.txt"][0]
    assert got["./docs/deep/hard-a2"][1:5] == whole["./docs/a.txt"][1:5]
    with pytest.raises(UsageError, match="has no"):
        restore_tree(store, info.id, tmp_path / "none", include="docs/missing")
    with pytest.raises(UsageError, match="climbs out"):
        restore_tree(store, info.id, tmp_path / "none", include="../etc")
    assert not (tmp_path / "none").exists()


# ---- what a backup does with what it finds ----------------------------------------------------


def test_special_files_and_vanished_entries_are_skipped_with_warnings(
    store: ChunkStore, tmp_path: Path
) -> None:
    root = tmp_path / "live"
    root.mkdir()
    (root / "keep.txt").write_text("kept\n")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    found: list[Event] = []
    try:
        info = backup_tree(store, root, "live", events=found.append)
    finally:
        sock.close()
    reasons = sorted((e.data["path"], e.data["reason"]) for e in found)
    assert reasons == [("./pipe", "special"), ("./sock", "special")]
    assert all(e.level == "warning" for e in found)
    assert info.stats["skipped"] == 2
    assert [item["path"] for item in list_tree(store, info.id)] == [".", "keep.txt"]


def test_a_file_that_vanishes_is_skipped(store: ChunkStore, tmp_path: Path) -> None:
    root = tmp_path / "live"
    root.mkdir()
    for name in "abc":
        (root / name).write_text(name)

    class Gone:
        """A real writer whose first file read deletes file c (read later, in name order)."""

        def __init__(self) -> None:
            self.writer = store.writer("live", "tree")

        def __enter__(self) -> Gone:
            return self

        def __exit__(self, *exc: object) -> None:
            self.writer.__exit__(*exc)

        def put_stream(self, reader: ByteSource, lengths: list[int] | None = None) -> list[bytes]:
            if (root / "c").exists():
                (root / "c").unlink()
            return self.writer.put_stream(reader, lengths)

        def __getattr__(self, name: str) -> object:
            return getattr(self.writer, name)

    class Store:
        config = store.config

        def writer(self, target: str, kind: str, **options: object) -> Gone:
            return Gone()

    found: list[Event] = []
    info = backup_tree(cast(ChunkStore, Store()), root, "live", events=found.append)
    assert [(e.data["path"], e.data["reason"]) for e in found] == [("./c", "vanished")]
    assert [item["path"] for item in list_tree(store, info.id)] == [".", "a", "b"]


# ---- the files cache --------------------------------------------------------------------------


def test_files_cache_skips_unchanged_files_and_rereads_changed_ones(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    old = time.time_ns() - 10_000_000_000
    time.sleep(1.1)  # files changed in the last second are not noted (see filescache)
    first = backup_tree(store, source, "vol", cache_dir=cache)
    assert first.stats["cached"] == 0 and first.stats["read_bytes"] > 3 * MiB
    second = backup_tree(store, source, "vol", cache_dir=cache)
    assert second.stats["cached"] == second.stats["files"] == 12
    assert second.stats["read_bytes"] == 0 and second.stats["new_bytes"] == 0

    (source / "docs" / "a.txt").write_text("changed, same inode\n")  # new ctime and size
    os.utime(source / "docs" / "a.txt", ns=(old, old))  # an old mtime does not hide it
    third = backup_tree(store, source, "vol", cache_dir=cache)
    # a.txt changed just now: read again, and not noted (it could change within the tick).
    assert third.stats["cached"] == 11
    dest = tmp_path / "restored"
    restore_tree(store, third.id, dest)
    assert (dest / "docs" / "a.txt").read_text() == "changed, same inode\n"
    assert snapshot(dest) == snapshot(source)


def test_files_cache_is_not_trusted_once_its_chunks_are_pruned(
    store: ChunkStore, source: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    time.sleep(1.1)
    first = backup_tree(store, source, "vol", cache_dir=cache)
    assert backup_tree(store, source, "vol", cache_dir=cache).stats["cached"] == 12
    other = make_store(tmp_path / "other")  # same cache folder, another store: its own note
    assert backup_tree(other, source, "vol", cache_dir=cache).stats["cached"] == 0
    assert len(list(cache.iterdir())) == 2

    store.forget([s.id for s in store.snapshots()])
    store.prune(grace=timedelta(0))  # every chunk the note names is gone
    assert not store.snapshots() and first.id
    info = backup_tree(store, source, "vol", cache_dir=cache)
    # Taken from the note: the two files without data, and copy.bin, whose chunks big.bin
    # (read just before) put back. Every other file was read again.
    assert info.stats["cached"] == 3
    assert info.stats["read_bytes"] == first.stats["read_bytes"] - (3 * MiB + 17)
    dest = tmp_path / "restored"
    restore_tree(store, info.id, dest)
    assert snapshot(dest) == snapshot(source)


def test_a_damaged_files_cache_is_no_cache(store: ChunkStore, source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    time.sleep(1.1)
    backup_tree(store, source, "vol", cache_dir=cache)
    (note,) = cache.iterdir()
    assert note.stat().st_mode & 0o777 == 0o600
    for damaged in (b"not zstd", b"", zstandard.compress(b'{"format":1,"files":{"tool":[1]}}')):
        note.write_bytes(damaged)
        again = backup_tree(store, source, "vol", cache_dir=cache)
        assert again.stats["cached"] == 0


# ---- hostile trees ----------------------------------------------------------------------------


def root_entry() -> Entry:
    return Entry("", DIR, 0o755, 0, 0, 1_600_000_000_000_000_000)


def crafted(store: ChunkStore, entries: list[Entry], body: dict[str, object] | None = None) -> str:
    """A snapshot whose tree blob holds exactly ``entries`` (written through the writer)."""
    with store.writer("evil", "tree") as writer:
        data = writer.put_blob(b"pwned\n", kind="data")
        for entry in entries:
            if entry.type == FILE and entry.size and entry.pieces is None:
                entry.chunks, entry.lengths = [data], [6]
        blob = writer.put_blob(encode(entries), kind="tree")
        listing = [[blob.hex(), entries[0].path, len(entries)]]
        info = writer.commit(body or {"format": FORMAT, "trees": listing}, {})
    return info.id


def evil_file(path: str) -> Entry:
    return Entry(path, FILE, 0o644, 0, 0, 1_600_000_000_000_000_000, size=6)


HOSTILE = {
    "dotdot": ([evil_file("../x")], "climbs out"),
    "dotdot-inside": ([evil_file("a/../../x")], "climbs out"),
    "absolute": ([evil_file("/etc/x")], "absolute"),
    "absolute-link": (
        [Entry("l", SYMLINK, 0o777, 0, 0, 0, link="/etc/passwd")],
        "absolute path",
    ),
    "escaping-link": ([Entry("l", SYMLINK, 0o777, 0, 0, 0, link="../../x")], "outside"),
    "through-a-link": (
        [Entry("l", SYMLINK, 0o777, 0, 0, 0, link="."), evil_file("l/x")],
        "not inside a folder",
    ),
    "through-a-file": ([evil_file("f"), evil_file("f/x")], "not inside a folder"),
    "hardlink-out": ([Entry("h", HARDLINK, 0o644, 0, 0, 0, link="../x")], "not an earlier file"),
    "repeated": ([evil_file("a"), evil_file("a")], "repeat"),
    "not-clean": ([evil_file("./a")], "not a plain relative name"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("dest_exists", [False, True])
def test_hostile_trees_are_refused_and_dest_is_unchanged(
    store: ChunkStore, tmp_path: Path, case: str, dest_exists: bool
) -> None:
    entries, why = HOSTILE[case]
    snapshot_id = crafted(store, [root_entry(), *entries])
    dest = tmp_path / "dest"
    if dest_exists:
        dest.mkdir()
    with pytest.raises(IntegrityError, match=why):
        restore_tree(store, snapshot_id, dest)
    assert dest.exists() == dest_exists and (not dest_exists or not os.listdir(dest))
    assert sorted(os.listdir(tmp_path)) == sorted(["store", *(["dest"] if dest_exists else [])])
    assert not (tmp_path.parent / "x").exists()


def test_a_file_beyond_the_filesystem_limit_fails_cleanly(
    store: ChunkStore, tmp_path: Path
) -> None:
    huge = Entry("huge", FILE, 0o644, 0, 0, 0, size=1 << 62, pieces=[(1 << 62, 0)])
    snapshot_id = crafted(store, [root_entry(), huge])
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(RestoreError, match="File too large"):
        restore_tree(store, snapshot_id, dest)
    assert sorted(os.listdir(tmp_path)) == ["deep", "store"] and not os.listdir(tmp_path / "deep")


def test_include_of_a_hostile_part_is_refused(store: ChunkStore, tmp_path: Path) -> None:
    entries = [
        root_entry(),
        Entry("a", DIR, 0o755, 0, 0, 0),
        Entry("a/l", SYMLINK, 0o777, 0, 0, 0, link="../../etc"),
        Entry("b", DIR, 0o755, 0, 0, 0),
        evil_file("b/fine"),
    ]
    snapshot_id = crafted(store, entries)
    with pytest.raises(IntegrityError, match="outside"):
        restore_tree(store, snapshot_id, tmp_path / "dest", include="a")
    restore_tree(store, snapshot_id, tmp_path / "dest", include="b/fine")
    assert (tmp_path / "dest" / "b" / "fine").read_bytes() == b"pwned\n"
    assert not (tmp_path / "dest" / "a").exists()


def test_a_symlink_chain_that_escapes_is_refused(store: ChunkStore, tmp_path: Path) -> None:
    # Each link alone stays inside; followed one after the other they leave the folder.
    entries = [
        root_entry(),
        Entry("d", DIR, 0o755, 0, 0, 0),
        Entry("d/up", SYMLINK, 0o777, 0, 0, 0, link=".."),
        Entry("z", SYMLINK, 0o777, 0, 0, 0, link="d/up/d/up/.."),
    ]
    snapshot_id = crafted(store, entries)
    with pytest.raises(IntegrityError, match="resolves outside"):
        restore_tree(store, snapshot_id, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_damaged_tree_blobs_and_bodies_are_refused(store: ChunkStore, tmp_path: Path) -> None:
    bad_bodies: list[dict[str, object]] = [
        {"format": "something else"},
        {"format": FORMAT, "trees": []},
        {"format": FORMAT, "trees": [["zz", "", 1]]},
    ]
    for body in bad_bodies:
        snapshot_id = crafted(store, [root_entry()], body)
        with pytest.raises(IntegrityError):
            restore_tree(store, snapshot_id, tmp_path / "dest")
    # The listing says 2 entries; the blob has 1.
    with store.writer("evil", "tree") as writer:
        blob = writer.put_blob(encode([root_entry()]), kind="tree")
        info = writer.commit({"format": FORMAT, "trees": [[blob.hex(), "", 2]]}, {})
    with pytest.raises(IntegrityError, match="does not hold"):
        restore_tree(store, info.id, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["store"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"p":"a","t":"x","m":420,"u":0,"g":0,"T":0}',
        b'{"p":"a","t":"f","m":-1,"u":0,"g":0,"T":0}',
        b'{"p":"a","t":"f","m":420,"u":0,"g":0,"T":0,"s":5,"c":["00"],"n":[5]}',
        b'{"p":"a","t":"f","m":420,"u":0,"g":0,"T":0,"s":5,"c":[],"n":[]}',
        b'{"p":"a","t":"f","m":420,"u":0,"g":0,"T":0,"s":5,"x":[[4,4]]}',
        b'{"p":"a","t":"d","m":420,"u":0,"g":0,"T":0,"l":"x"}',
        b'{"p":"a","t":"l","m":420,"u":0,"g":0,"T":0}',
        b'{"p":7,"t":"f","m":420,"u":0,"g":0,"T":0}',
        b"[1]",
        b"{not json",
    ],
)
def test_malformed_entries_are_refused(line: bytes) -> None:
    with pytest.raises(IntegrityError, match="damaged"):
        decode_lines(line + b"\n")


def test_entries_round_trip_through_json_lines() -> None:
    odd = os.fsdecode(b"caf\xe9/\xff\xfe")
    entries = [
        root_entry(),
        Entry(
            odd,
            FILE,
            0o4755,
            2**32 - 1,
            7,
            -5,
            size=10,
            chunks=[b"\1" * 32, b"\2" * 32],
            lengths=[3, 4],
            pieces=[(0, 3), (6, 4), (10, 0)],
        ),
        Entry("l", SYMLINK, 0o777, 0, 0, 9, link=odd),
        Entry("h", HARDLINK, 0o644, 0, 0, 9, link=odd),
    ]
    data = encode(entries)
    assert data.isascii() and data.count(b"\n") == 4
    assert decode_lines(data) == entries


def test_plan_needs_a_root_folder() -> None:
    with pytest.raises(IntegrityError, match="no root"):
        make_plan([], Path("/nowhere"))
    with pytest.raises(IntegrityError, match="not a folder"):
        make_plan([evil_file("")], Path("/nowhere"))
