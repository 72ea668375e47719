"""Retention of chunk store snapshots (``prune_snapshots``) on a real local chunk store: years
of snapshots with set times, judged per target by the GFS policy, forgotten, and their data
pruned while every kept snapshot still exports byte for byte."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import blake3
import pytest

from safehold.chunkstore import ChunkStore, HostKey
from safehold.chunkstore.inventory import stored_packs
from safehold.chunkstore.layout import pack_key
from safehold.chunkstore.trees import export_stream
from safehold.chunkstore.trees.chunks import put_content
from safehold.chunkstore.trees.streams import FORMAT
from safehold.crypto import EncryptionKey, generate_keypair, load_decryption_key
from safehold.errors import UsageError
from safehold.model import Event
from safehold.operations.snapshots import prune_snapshots
from safehold.retention import Policy
from safehold.storage import LocalStorage

KIB = 1024
CHUNKS = (1 * KIB, 4 * KIB, 16 * KIB)  # small chunks: a few KiB of data makes several
PACK = 64 * KIB
NOW_AFTER = timedelta(hours=6)  # ``now``: this long after the newest snapshot
GRACE = timedelta(0)  # the packs were all just written: none is young for these prunes


@dataclass
class Made:
    """What the test wrote: each snapshot's time, data and chunk ids, by snapshot id."""

    time: dict[str, datetime] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    chunks: dict[str, set[bytes]] = field(default_factory=dict)

    def put(self, store: ChunkStore, target: str, data: bytes, when: datetime) -> str:
        """One stream snapshot of ``target`` made at ``when`` (as ``backup_stream`` writes it)."""
        with store.writer(target, "stream", started=when) as writer:
            chunks, lengths = put_content(writer, io.BytesIO(data))
            body = {
                "format": FORMAT,
                "chunks": [chunk.hex() for chunk in chunks],
                "lengths": lengths,
                "size": len(data),
                "blake3": blake3.blake3(data).hexdigest(),
                "meta": {},
            }
            info = writer.commit(body, {"files": 1, "bytes": len(data)})
        self.time[info.id], self.data[info.id], self.chunks[info.id] = when, data, set(chunks)
        return info.id


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def store(tmp_path: Path, root: Path) -> ChunkStore:
    recipient = generate_keypair(tmp_path / "identity.txt")
    decryption = load_decryption_key(identity_file=tmp_path / "identity.txt")
    assert decryption is not None
    storage = LocalStorage(root)
    storage.ensure()
    host = HostKey.generate(tmp_path / "id.key")
    ChunkStore.init(storage, host, EncryptionKey((recipient,)), pack_size=PACK, chunk_sizes=CHUNKS)
    # The cache keeps the index between writers: 1100 snapshots are written in seconds.
    cache = tmp_path / "cache"
    return ChunkStore.open(storage, host_key=host, decryption=decryption, cache_dir=cache)


def exported(store: ChunkStore, snapshot_id: str) -> bytes:
    out = io.BytesIO()
    export_stream(store, snapshot_id, out)
    return out.getvalue()


def pack_bytes(store: ChunkStore) -> int:
    return sum(store.storage.size(pack_key(name)) for name in stored_packs(store.storage))


def objects(root: Path) -> dict[str, tuple[int, int]]:
    """Every object under the repository: its size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def gfs(times: list[datetime], policy: Policy) -> set[datetime]:
    """The times the policy keeps, worked out here on its own: the newest, and per rule the
    newest time of each of the N most recent (UTC) days, ISO weeks, months, years that have
    one."""
    newest_first = sorted(times, reverse=True)
    keep = set(newest_first[:1])
    rules: list[tuple[int, Callable[[datetime], Hashable]]] = [
        (policy.daily, lambda t: t.date()),
        (policy.weekly, lambda t: t.isocalendar()[:2]),
        (policy.monthly, lambda t: (t.year, t.month)),
        (policy.yearly, lambda t: t.year),
    ]
    for count, bucket in rules:
        firsts: dict[Hashable, datetime] = {}
        for moment in newest_first:
            firsts.setdefault(bucket(moment), moment)  # buckets in order, newest first
        keep.update(list(firsts.values())[:count])
    return keep


def test_three_years_of_daily_snapshots(store: ChunkStore) -> None:
    made = Made()
    base = random.Random(1).randbytes(32 * KIB)  # in every snapshot
    first = datetime(2022, 1, 3, 2, 0, tzinfo=UTC)  # a Monday
    for day in range(1100):  # to Monday 2025-01-06
        when = first + timedelta(days=day)
        # Data changes once a month (a new index object per month keeps the writes fast).
        monthly = random.Random(when.year * 100 + when.month).randbytes(2 * KIB)
        made.put(store, "database:app", base + monthly, when)
    assert [s.time for s in store.snapshots()] == sorted(made.time.values())
    policy = Policy(daily=30, weekly=12, monthly=12, yearly=7)
    now = max(made.time.values()) + NOW_AFTER
    before = pack_bytes(store)
    events: list[Event] = []

    result = prune_snapshots(store, policy, now, dry_run=False, sink=events.append, grace=GRACE)

    expected = gfs(list(made.time.values()), policy)
    kept_ids = {i for i, t in made.time.items() if t in expected}
    assert {d.candidate.name for d in result.decisions if d.keep} == kept_ids
    assert {s.id for s in store.snapshots()} == kept_ids
    assert sorted(result.forgotten) == sorted(set(made.time) - kept_ids)
    # By hand: the last 30 days, then the weekly, monthly and yearly representatives before.
    older = sorted(t.date() for t in expected if t.date() < date(2024, 12, 8))
    assert older == [
        date(2022, 12, 31),
        date(2023, 12, 31),
        *(date(2024, m, d) for m, d in [(2, 29), (3, 31), (4, 30), (5, 31), (6, 30)]),
        *(date(2024, m, d) for m, d in [(7, 31), (8, 31), (9, 30), (10, 27), (10, 31)]),
        *(date(2024, m, d) for m, d in [(11, 3), (11, 10), (11, 17), (11, 24), (11, 30)]),
        date(2024, 12, 1),
    ]
    assert len(expected) == 30 + len(older)
    for rule, count in (("daily", 30), ("weekly", 12), ("monthly", 12), ("yearly", 4)):
        having = [d for d in result.decisions if any(r.startswith(f"{rule} ") for r in d.reasons)]
        assert len(having) == count, rule
    assert all(
        d.candidate.kind == "database" and d.candidate.target == "app" for d in result.decisions
    )

    assert result.store is not None and result.store.bytes_removed > 0
    assert pack_bytes(store) < before
    assert store.verify(read_data=1.0).ok
    for snapshot_id in kept_ids:
        assert exported(store, snapshot_id) == made.data[snapshot_id]
    summary = json.loads(json.dumps(result.to_json()))
    assert len(summary["decisions"]) == 1100 and summary["store"]["bytes_removed"] > 0
    assert any(f"forgot {len(result.forgotten)}" in e.message for e in events)


def test_targets_are_judged_separately(store: ChunkStore) -> None:
    made = Made()
    start = datetime(2024, 3, 1, 1, 0, tzinfo=UTC)
    shared = random.Random(7).randbytes(24 * KIB)  # in every snapshot of both targets
    volume = [
        made.put(store, "volume:user-data", shared + random.Random(i).randbytes(3 * KIB), t)
        for i, t in enumerate(start + timedelta(days=d) for d in range(10))
    ]
    database = [  # all newer than every volume snapshot
        made.put(store, "database:app", shared + random.Random(50 + i).randbytes(3 * KIB), t)
        for i, t in enumerate(start + timedelta(days=20 + d, hours=1) for d in range(4))
    ]
    # The same name as the volume, another kind: a group of its own, with one snapshot.
    other_kind = made.put(store, "database:user-data", shared, start + timedelta(days=1))
    foreign = made.put(store, "scratch", b"library data", start)  # not a product target
    policy = Policy(daily=3, weekly=0, monthly=0, yearly=0, keep_last=1)
    now = start + timedelta(days=30)
    events: list[Event] = []

    result = prune_snapshots(store, policy, now, dry_run=False, sink=events.append, grace=GRACE)

    # Together, the four database days would have crowded out every volume snapshot.
    kept = volume[-3:] + database[-3:] + [other_kind, foreign]
    assert sorted(s.id for s in store.snapshots()) == sorted(kept)
    assert sorted(result.forgotten) == sorted(volume[:7] + database[:1])
    assert foreign not in {d.candidate.name for d in result.decisions}
    warnings = [e for e in events if e.level == "warning"]
    assert len(warnings) == 1 and foreign in warnings[0].message
    groups = {(d.candidate.kind, d.candidate.target) for d in result.decisions}
    assert groups == {("volume", "user-data"), ("database", "app"), ("database", "user-data")}
    for snapshot_id in kept:
        assert exported(store, snapshot_id) == made.data[snapshot_id]
    assert store.verify(read_data=1.0).ok


def test_dry_run_changes_nothing(store: ChunkStore, root: Path) -> None:
    made = Made()
    start = datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
    for day in range(12):
        data = random.Random(day).randbytes(6 * KIB)
        made.put(store, "database:app", data, start + timedelta(days=day))
    policy = Policy(daily=2, weekly=0, monthly=0, yearly=0)
    now = start + timedelta(days=12)
    snapshots, stored = store.snapshots(), objects(root)
    events: list[Event] = []

    result = prune_snapshots(store, policy, now, dry_run=True, sink=events.append, grace=GRACE)

    assert result.dry_run and result.store is None and result.forgotten == []
    assert len(result.removed) == 10 and len(result.kept) == 2
    assert store.snapshots() == snapshots
    assert objects(root) == stored
    assert [e.message for e in events] == ["snapshots: kept 2, would forget 10"]
    assert json.loads(json.dumps(result.to_json()))["store"] is None

    with pytest.raises(UsageError, match="keeps nothing"):  # refused before any change
        prune_snapshots(store, Policy(0, 0, 0, 0, keep_last=0), now, dry_run=False)
    assert objects(root) == stored


def test_forgotten_data_is_pruned_and_kept_data_stays(store: ChunkStore) -> None:
    made = Made()
    start = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)
    # The base is first stored by the oldest snapshot, in a pack that is then a third live:
    # prune repacks the base and deletes that pack (a pack half live or more is kept whole).
    base = random.Random(99).randbytes(12 * KIB)
    ids = [
        made.put(store, "database:app", base + random.Random(i).randbytes(24 * KIB), when)
        for i, when in enumerate(start + timedelta(days=d) for d in range(8))
    ]
    policy = Policy(daily=3, weekly=0, monthly=0, yearly=0)
    now = start + timedelta(days=8)
    before = pack_bytes(store)

    result = prune_snapshots(store, policy, now, dry_run=False, grace=GRACE)

    kept, gone = ids[-3:], ids[:-3]
    assert sorted(result.forgotten) == sorted(gone)
    assert [s.id for s in store.snapshots()] == kept
    needed = set().union(*(made.chunks[i] for i in kept))
    only_gone = set().union(*(made.chunks[i] for i in gone)) - needed
    assert only_gone and needed
    index = store.index()
    assert not [c for c in only_gone if c in index]  # the forgotten data is gone
    assert all(c in index for c in needed)  # the shared base too, first stored by a gone one
    assert result.store is not None and len(result.store.removed_packs) == len(gone)
    assert len(result.store.repacked_packs) == 1 and len(result.store.new_packs) == 1
    after = pack_bytes(store)
    assert after < before and result.store.bytes_removed > 0
    report = store.verify(read_data=1.0)
    assert report.ok and not report.unindexed_packs, report.errors
    for snapshot_id in kept:
        assert exported(store, snapshot_id) == made.data[snapshot_id]
