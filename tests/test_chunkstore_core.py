"""The chunk store's core on real storage (local disk and a SeaweedFS S3 server): round trips
compared byte for byte, dedup, who can read what, damage detection, prune and verify.

Crashes (kill -9 of a writer), concurrent writers and locks are in test_chunkstore_crash.py.
"""

from __future__ import annotations

import io
import random
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from safehold.chunkstore import ChunkStore, HostKey
from safehold.chunkstore.inventory import stored_packs
from safehold.chunkstore.layout import CONFIG, INDEX, LOCKS, pack_key
from safehold.chunkstore.writer import chunker
from safehold.crypto import DecryptionKey, EncryptionKey, generate_keypair, load_decryption_key
from safehold.errors import ConfigError, DecryptionKeyError, IntegrityError, UsageError
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage
from safehold.storage.base import Storage

KIB = 1024
MIB = 1024 * KIB
SMALL = (16 * KIB, 64 * KIB, 256 * KIB)  # chunk sizes: many chunks from a few MiB
PACK = 512 * KIB


@dataclass
class Keys:
    host: HostKey
    host_path: Path
    encryption: EncryptionKey
    decryption: DecryptionKey


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    recipient = generate_keypair(tmp_path / "identity.txt")
    decryption = load_decryption_key(identity_file=tmp_path / "identity.txt")
    assert decryption is not None
    host_path = tmp_path / "id.key"
    return Keys(HostKey.generate(host_path), host_path, EncryptionKey((recipient,)), decryption)


@pytest.fixture(scope="module")
def s3_bucket(s3: SandboxS3) -> str:
    return s3.bucket()


def s3_storage(request: pytest.FixtureRequest) -> Storage:
    server: SandboxS3 = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("s3_bucket")
    return server.storage(bucket, f"host-{secrets.token_hex(4)}/repo")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.service)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        local = LocalStorage(tmp_path / "repo")
        local.ensure()
        return local
    return s3_storage(request)  # only the S3 cases start the server


def new_store(storage: Storage, keys: Keys, **options: object) -> ChunkStore:
    options = {"pack_size": PACK, "chunk_sizes": SMALL, **options}
    ChunkStore.init(storage, keys.host, keys.encryption, **options)  # type: ignore[arg-type]
    return ChunkStore.open(storage, host_key=keys.host, decryption=keys.decryption)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def repetitive_bytes(size: int, seed: int) -> bytes:
    """Text-like and full of repeats: compresses well, dedups within itself."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(200)]
    block = b" ".join(rng.choice(words) for _ in range(40_000))
    return (block * (size // len(block) + 1))[:size]


def backup(store: ChunkStore, data: bytes, target: str = "db") -> str:
    with store.writer(target, "stream") as writer:
        ids = writer.put_stream(io.BytesIO(data))
        info = writer.commit({"chunks": [i.hex() for i in ids]}, {"files": 1})
    return info.id


def restore(store: ChunkStore, snapshot_id: str) -> bytes:
    chunks = [bytes.fromhex(h) for h in store.read_body(snapshot_id)["chunks"]]
    found = dict(store.read_blobs(chunks))
    return b"".join(found[c] for c in chunks)


def pack_bytes(storage: Storage) -> int:
    return sum(storage.size(pack_key(name)) for name in stored_packs(storage))


def reader_of(storage: Storage, keys: Keys) -> ChunkStore:
    """A restore host: only the bucket and the identity (the id key comes from the bucket)."""
    return ChunkStore.open(storage, decryption=keys.decryption)


# ---- round trips and dedup ----


@pytest.mark.parametrize("make", [random_bytes, repetitive_bytes], ids=["random", "repetitive"])
def test_round_trip(storage: Storage, keys: Keys, make: object) -> None:
    data = make(6 * MIB + 12345, 1)  # type: ignore[operator]
    store = new_store(storage, keys)
    snapshot_id = backup(store, data)
    assert restore(reader_of(storage, keys), snapshot_id) == data
    [info] = store.snapshots()
    assert (info.id, info.target, info.kind) == (snapshot_id, "db", "stream")
    assert info.stats["bytes"] == len(data) and info.stats["files"] == 1
    assert info.stats["new_packs"] == len(stored_packs(storage)) >= 1
    assert store.verify(read_data=1.0).errors == []


def test_empty_stream_and_blobs(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    with store.writer("folder", "tree") as writer:
        assert writer.put_stream(io.BytesIO(b"")) == []
        tree = writer.put_blob(b'{"entries": []}')
        again = writer.put_blob(b'{"entries": []}')
        info = writer.commit({"root": tree.hex()})
    assert tree == again and info.stats["new_packs"] == 1
    assert store.read_body(info.id) == {"root": tree.hex()}
    assert dict(store.read_blobs([tree, tree])) == {tree: b'{"entries": []}'}


def test_the_default_chunking_round_trips(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    ChunkStore.init(storage, keys.host, keys.encryption)
    store = ChunkStore.open(storage, host_key=keys.host, decryption=keys.decryption)
    data = random_bytes(40 * MIB, 2)
    snapshot_id = backup(store, data)
    # Packs are listed by (random) name, not in stream order: only the stream's last chunk,
    # wherever it is listed, may be under the minimum.
    sizes = sorted(e[4] for entries in store.index().packs.values() for e in entries)
    assert len(sizes) > 10 and min(sizes[1:]) >= 512 * KIB and max(sizes) <= 8 * MIB
    assert len(stored_packs(storage)) == 3  # 16 MiB packs: 16 + 16 + 8
    assert restore(store, snapshot_id) == data


def test_a_second_backup_of_the_same_data_stores_nothing(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    data = random_bytes(5 * MIB, 3)
    first = backup(store, data)
    packs, size = stored_packs(storage), pack_bytes(storage)
    second = backup(store, data)
    assert stored_packs(storage) == packs and pack_bytes(storage) == size
    assert store.snapshot(second).stats["new_bytes"] == 0
    # an edit in the middle: only the chunks around it are new
    edited = data[: 2 * MIB] + b"inserted" + data[2 * MIB :]
    third = backup(store, edited)
    assert 0 < store.snapshot(third).stats["new_bytes"] < 1 * MIB
    reader = reader_of(storage, keys)
    assert [restore(reader, s) for s in (first, second, third)] == [data, data, edited]


def test_chunk_boundaries_and_ids_depend_on_the_id_key(tmp_path: Path, keys: Keys) -> None:
    data = random_bytes(3 * MIB, 4)
    ids, lengths = [], []
    for name in ("a", "b"):
        storage = LocalStorage(tmp_path / name)
        host = HostKey.generate(tmp_path / f"{name}.key")
        ChunkStore.init(storage, host, keys.encryption, pack_size=PACK, chunk_sizes=SMALL)
        store = ChunkStore.open(storage, host_key=host)
        with store.writer("db", "stream") as writer:
            ids.append(writer.put_stream(io.BytesIO(data)))
            writer.commit({})
        index = store.index()
        lengths.append([index.where[i][1][4] for i in ids[-1]])
    assert set(ids[0]).isdisjoint(ids[1])
    assert lengths[0] != lengths[1] and sum(lengths[0]) == sum(lengths[1]) == len(data)


def test_streams_cut_as_the_chunker_does_and_trees_get_their_own_packs(
    tmp_path: Path, keys: Keys
) -> None:
    storage = LocalStorage(tmp_path / "repo")
    store = new_store(storage, keys)
    cdc = chunker(keys.host, store.config)
    sizes = [0, 1, SMALL[0] - 1, SMALL[0], SMALL[0] + 1, 3 * SMALL[1], 2 * MIB]
    with store.writer("folder", "tree") as writer:
        for number, size in enumerate(sizes):
            data = random_bytes(size, 20 + number)
            lengths: list[int] = []
            ids = writer.put_stream(io.BytesIO(data), lengths)
            cut = [bytes(c.data) for c in cdc.cut_buf(data)]
            assert ids == [keys.host.chunk_id(c) for c in cut]
            assert lengths == [len(c) for c in cut] and sum(lengths) == size
        tree = writer.put_blob(b"a tree " * 100)
        assert writer.has_all([tree, *ids]) and not writer.has_all([bytes(32)])
        info = writer.commit({"root": tree.hex()})
    index = store.index()
    tree_pack = index.where[tree][0]
    assert [e[1] for e in index.packs[tree_pack]] == ["tree"]
    assert info.stats["bytes"] == sum(sizes) + 700


# ---- who can read what ----


def test_the_backup_host_lists_and_backs_up_but_cannot_read(storage: Storage, keys: Keys) -> None:
    new_store(storage, keys)
    host_only = ChunkStore.open(storage, host_key=HostKey.load(keys.host_path))
    data = repetitive_bytes(2 * MIB, 5)
    snapshot_id = backup(host_only, data)
    assert [s.id for s in host_only.snapshots("db")] == [snapshot_id]
    assert host_only.snapshots("other") == []
    with pytest.raises(DecryptionKeyError) as caught:
        host_only.read_body(snapshot_id)
    assert caught.value.hint and "identity" in caught.value.hint
    some = next(iter(host_only.index().where))
    with pytest.raises(DecryptionKeyError):
        host_only.read_blobs([some])
    assert restore(reader_of(storage, keys), snapshot_id) == data


def test_a_wrong_host_key_is_refused(storage: Storage, keys: Keys, tmp_path: Path) -> None:
    new_store(storage, keys)
    other = HostKey.generate(tmp_path / "other.key")
    with pytest.raises(ConfigError) as caught:
        ChunkStore.open(storage, host_key=other)
    assert "not this chunk store's key" in caught.value.message and caught.value.hint
    with pytest.raises(UsageError):
        ChunkStore.open(storage)  # neither key
    with pytest.raises(UsageError):
        ChunkStore.init(storage, keys.host, keys.encryption)  # never twice


def test_nothing_readable_to_the_bucket_alone(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    secret = b"the-secret-file-name.txt " * 5000
    with store.writer("volume-x", "tree") as writer:
        blob = writer.put_blob(secret)
        writer.commit({"names": ["the-secret-file-name.txt"], "root": blob.hex()})
    keys_found = [
        k for folder in (INDEX, "chunks/snapshots", "chunks/keys") for k in storage.list(folder)
    ]
    everything = b"".join(storage.read_bytes(k) for k in keys_found)
    everything += b"".join(storage.read_bytes(pack_key(p)) for p in stored_packs(storage))
    assert b"secret-file" not in everything and b"volume-x" not in everything
    assert blob.hex().encode() not in everything and keys.host.id_key not in everything


def test_an_altered_config_is_refused(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    new_store(storage, keys)
    other = generate_keypair(tmp_path / "attacker.txt")
    text = storage.read_bytes(CONFIG).decode()
    storage.put_bytes(CONFIG, text.replace(keys.encryption.recipients[0], other).encode())
    with pytest.raises(IntegrityError, match="altered"):
        ChunkStore.open(storage, host_key=keys.host)


# ---- damage ----


def test_a_corrupted_pack_byte_is_caught_and_named(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    data = random_bytes(3 * MIB, 6)
    snapshot_id = backup(store, data)
    victim = sorted(stored_packs(storage))[1]
    raw = bytearray(storage.read_bytes(pack_key(victim)))
    raw[len(raw) // 2] ^= 0x01
    storage.delete(pack_key(victim))  # a bit flip at rest (the store itself never rewrites)
    storage.put_bytes(pack_key(victim), bytes(raw))
    with pytest.raises(IntegrityError) as caught:
        restore(reader_of(storage, keys), snapshot_id)
    assert pack_key(victim) in caught.value.message
    report = store.verify(read_data=1.0)
    assert [e for e in report.errors if victim in e] and not report.ok
    assert store.verify().ok  # structure alone cannot see it


def test_a_swapped_pack_fails_the_blob_hash(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    store = new_store(storage, keys)
    snapshot_id = backup(store, random_bytes(3 * MIB, 7))
    first, second = sorted(stored_packs(storage))[:2]
    a, b = storage.path(pack_key(first)), storage.path(pack_key(second))
    content_a = a.read_bytes()
    a.write_bytes(b.read_bytes())  # a well-formed pack of the store, under another name
    b.write_bytes(content_a)
    with pytest.raises(IntegrityError) as caught:
        restore(reader_of(storage, keys), snapshot_id)
    assert first in caught.value.message or second in caught.value.message


def test_a_lost_pack_is_reported_by_verify(storage: Storage, keys: Keys) -> None:
    store = new_store(storage, keys)
    snapshot_id = backup(store, random_bytes(2 * MIB, 8))
    victim = sorted(stored_packs(storage))[0]
    storage.delete(pack_key(victim))
    report = store.verify()
    assert any(snapshot_id in e and victim in e for e in report.errors)
    with pytest.raises(IntegrityError, match="missing"):
        restore(reader_of(storage, keys), snapshot_id)
    with pytest.raises(IntegrityError, match="prune stopped"):
        store.prune(grace=timedelta(0))


# ---- forget, prune, cache ----


def test_prune_after_forget_removes_only_what_no_snapshot_needs(
    storage: Storage, keys: Keys
) -> None:
    store = new_store(storage, keys)
    shared = random_bytes(3 * MIB, 9)
    keep_data = shared + random_bytes(1 * MIB, 10)
    gone_data = random_bytes(4 * MIB, 11) + shared[: 1 * MIB]
    keep = backup(store, keep_data, "a")
    gone = backup(store, gone_data, "b")
    before = pack_bytes(storage)
    assert store.forget([gone]) == [gone]
    with pytest.raises(UsageError):
        store.forget([gone])
    assert store.prune(grace=timedelta(hours=1)).removed_packs == []  # all too young
    report = store.prune(grace=timedelta(0))
    assert report.removed_packs and report.refused == [] and report.snapshots == 1
    after = pack_bytes(storage)
    assert after < before - 3 * MIB
    assert len(storage.list(INDEX)) == 1
    reader = reader_of(storage, keys)
    assert restore(reader, keep) == keep_data
    assert reader.verify(read_data=1.0).errors == []
    again = store.prune(grace=timedelta(0))  # nothing left to do
    assert (again.removed_packs, again.removed_indexes) == ([], [])
    assert storage.list(LOCKS) == []


def test_prune_repacks_half_empty_packs(storage: Storage, keys: Keys) -> None:
    store = ChunkStore.init(
        storage, keys.host, keys.encryption, pack_size=4 * MIB, chunk_sizes=SMALL
    )
    store = ChunkStore.open(storage, host_key=keys.host, decryption=keys.decryption)
    data = random_bytes(3 * MIB, 12)
    with store.writer("mixed", "stream") as writer:
        keep_ids = writer.put_stream(io.BytesIO(data[:MIB]))
        writer.put_stream(io.BytesIO(data[MIB:]))
        mixed = writer.commit({})
    with store.writer("kept", "stream") as writer:
        writer.reference(keep_ids)
        kept = writer.commit({"chunks": [i.hex() for i in keep_ids]})
    [old_pack] = stored_packs(storage)
    store.forget([mixed.id])
    host_only = ChunkStore.open(storage, host_key=keys.host)
    note = host_only.prune(grace=timedelta(0))
    assert note.repacked_packs == [] and note.notes and stored_packs(storage) == {old_pack}
    report = store.prune(grace=timedelta(0))
    assert report.repacked_packs == [old_pack] and len(report.new_packs) == 1
    assert stored_packs(storage) == set(report.new_packs)
    assert pack_bytes(storage) < 1.5 * MIB
    assert restore(reader_of(storage, keys), kept.id) == data[:MIB]


def test_the_cache_follows_the_index_objects(tmp_path: Path, keys: Keys) -> None:
    storage = LocalStorage(tmp_path / "repo")
    new_store(storage, keys)
    cache = tmp_path / "cache"
    store = ChunkStore.open(
        storage, host_key=keys.host, decryption=keys.decryption, cache_dir=cache
    )
    first = backup(store, random_bytes(2 * MIB, 13))
    assert set(store.index().where) == set(
        ChunkStore.open(storage, host_key=keys.host).index().where
    )
    second = backup(store, random_bytes(2 * MIB, 14))  # a new index object: rebuilt
    cached = store.index()
    assert len(cached.names) == 2 and {s.id for s in store.snapshots()} == {first, second}
    assert all(p.stat().st_mode & 0o077 == 0 for p in cache.rglob("*") if p.is_file())
    assert restore(store, second) == random_bytes(2 * MIB, 14)
    store.forget([first])
    assert [s.id for s in store.snapshots()] == [second]
    assert sorted(p.name for p in cache.rglob("2*")) == [second]  # the forgotten header went
