"""PITR retention: pure tables for base backups and WAL (years of daily base backups across a
timeline switch), then a real repository built with ``wal.push`` on 16 MiB files and base
records written as pitr writes them, pruned and listed through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import base as pitr
from safehold.operations.pitr.base import BaseBackup
from safehold.operations.pitr.retention import (
    KEEP_HISTORY,
    KEEP_NO_BASE,
    KEEP_UNKNOWN,
    decide,
    segment_part,
)
from safehold.retention import Policy
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage, Storage

from .conftest import ROOT

DEFAULTS = Policy()  # daily 30, weekly 12, monthly 12, yearly 7, keep_last 1


def lsn_at(position: int, offset: int = 0x28) -> str:
    """An LSN inside the segment at ``position`` (16 MiB segments: 256 per log)."""
    value = position * wal.SEGMENT_SIZE + offset
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def seg(timeline: int, position: int) -> str:
    return f"{timeline:08X}{position // 256:08X}{position % 256:08X}"


def base_at(when: datetime, position: int, timeline: int, size: int = 1000) -> BaseBackup:
    return BaseBackup(
        name=f"base_{when:%Y%m%d_%H%M%S}",
        sha256="0" * 64,
        size=size,
        raw_size=size * 3,
        start_lsn=lsn_at(position),
        stop_lsn=lsn_at(position, 0x100),
        timeline=timeline,
        started=when,
        finished=when + timedelta(minutes=5),
    )


def test_segment_names_and_positions() -> None:
    assert seg(1, 0x1FF) == "0000000100000001000000FF"
    assert base_at(datetime(2024, 1, 1, tzinfo=UTC), 0x1FF, 3).start_segment == (
        "0000000300000001000000FF"
    )
    assert segment_part("000000010000000200000003") == "000000010000000200000003"
    assert segment_part("000000010000000200000003.partial") == "000000010000000200000003"
    assert segment_part("000000010000000200000003.00000028.backup") == "000000010000000200000003"
    assert segment_part("00000002.history") is None
    assert segment_part("000000010000000200000003.zst") is None


# ---- years of daily base backups across a timeline switch ----

FIRST_DAY = date(2022, 1, 1)
LAST_DAY = date(2024, 6, 30)  # a Sunday
SWITCH_DAY = date(2024, 3, 15)  # a promotion at noon: timeline 2 from then on
PER_DAY = 4  # segments archived a day


def years_of_history() -> tuple[list[BaseBackup], dict[str, date]]:
    """A base backup every day at 02:00 (it starts the day's first segment) and the day's WAL;
    returns the bases and every archived name with the day that produced it."""
    days = (LAST_DAY - FIRST_DAY).days + 1
    switch = (SWITCH_DAY - FIRST_DAY).days * PER_DAY + 2  # the third segment of that day
    bases: list[BaseBackup] = []
    names: dict[str, date] = {}
    for index in range(days):
        day = FIRST_DAY + timedelta(days=index)
        first = index * PER_DAY + 1
        timeline = 1 if first < switch else 2
        when = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
        bases.append(base_at(when, first, timeline))
        names[f"{seg(timeline, first)}.00000028.backup"] = day
        for position in range(first, first + PER_DAY):
            if position == switch:
                names[seg(1, position) + ".partial"] = day
                names["00000002.history"] = day
            names[seg(1 if position < switch else 2, position)] = day
    return bases, names


def expected_kept_days() -> set[date]:
    daily = {LAST_DAY - timedelta(days=n) for n in range(30)}  # 2024-06-01 .. 06-30
    weekly = {LAST_DAY - timedelta(weeks=n) for n in range(12)}  # Sundays back to 2024-04-14
    months = [(2024, m) for m in range(1, 7)] + [(2023, m) for m in range(7, 13)]
    monthly = {_last_of(y, m) for y, m in months}
    yearly = {date(2022, 12, 31), date(2023, 12, 31), LAST_DAY}
    return daily | weekly | monthly | yearly


def _last_of(year: int, month: int) -> date:
    following = date(year + month // 12, month % 12 + 1, 1)
    return min(following - timedelta(days=1), LAST_DAY)


def test_years_of_daily_base_backups_and_wal_across_a_timeline_switch() -> None:
    bases, names = years_of_history()
    now = datetime(2024, 6, 30, 12, tzinfo=UTC)

    plan = decide(bases, sorted(names), DEFAULTS, now)

    kept_days = {b.started.date() for b, d in zip(bases, plan.bases, strict=True) if d.keep}
    assert len(kept_days) == 49
    assert kept_days == expected_kept_days()
    oldest = plan.oldest_kept
    assert oldest is not None and oldest.name == "base_20221231_020000"
    assert oldest.start_segment == "0000000100000005000000B1"  # position 1457 = 4 * 364 + 1
    by_name = {d.candidate.name: d for d in plan.bases}
    assert by_name["base_20221231_020000"].reasons == ["yearly 2022"]
    assert by_name["base_20240630_020000"].reasons[:2] == ["newest good backup", "keep-last 1"]
    assert by_name["base_20221230_020000"].reasons == ["remove: outside every window"]

    removed = set(plan.wal_removed)
    # Everything archived before the oldest kept base backup's day, and nothing else.
    assert removed == {name for name, day in names.items() if day < date(2022, 12, 31)}
    assert len(removed) == 364 * (PER_DAY + 1)
    reason = "before the oldest kept base backup base_20221231_020000 (starts at " + (
        "0000000100000005000000B1)"
    )
    assert {d.reason for d in plan.wal if not d.keep} == {reason}
    decisions = {d.name: d for d in plan.wal}
    assert decisions["00000002.history"].keep
    assert decisions["00000002.history"].reason == KEEP_HISTORY
    # Both sides of the switch stay: the old timeline's partial and the new timeline's segments.
    switch_position = (SWITCH_DAY - FIRST_DAY).days * PER_DAY + 2
    assert decisions[seg(1, switch_position) + ".partial"].keep
    assert decisions[seg(2, switch_position)].keep
    assert decisions[seg(2, switch_position)].reason == "needed by base_20221231_020000"
    assert decisions[seg(1, 1457)].keep and not decisions[seg(1, 1456)].keep


def test_timelines_history_labels_and_unknown_names() -> None:
    # The oldest kept base backup runs on timeline 2 and starts at position 10.
    old = base_at(datetime(2024, 1, 1, tzinfo=UTC), 4, 1)
    kept = base_at(datetime(2024, 2, 1, tzinfo=UTC), 10, 2)
    names = {
        seg(1, 9): False,  # older timeline, before the start
        seg(2, 9): False,  # its own timeline, before the start
        seg(1, 9) + ".partial": False,
        seg(1, 4) + ".00000028.backup": False,  # the label of the removed base backup
        seg(3, 9): True,  # a later timeline: a switch may come after it
        seg(1, 11): True,  # after the start, whatever the timeline
        seg(2, 10): True,
        seg(2, 10) + ".00000028.backup": True,
        seg(2, 0x200): True,  # a later log file
        "00000001.history": True,
        "00000003.history": True,
        "README": True,
    }
    only_newest = Policy(daily=1, weekly=0, monthly=0, yearly=0, keep_last=0)
    plan = decide([old, kept], sorted(names), only_newest, kept.started)

    assert [d.keep for d in plan.bases] == [False, True]
    assert {d.name: d.keep for d in plan.wal} == names
    reasons = {d.name: d.reason for d in plan.wal}
    assert reasons["README"] == KEEP_UNKNOWN
    assert reasons[seg(2, 10) + ".00000028.backup"] == f"needed by {kept.name} (backup label)"
    assert reasons[seg(1, 9)] == (
        f"before the oldest kept base backup {kept.name} (starts at {seg(2, 10)})"
    )


def test_no_base_backup_removes_no_wal_and_the_newest_base_is_always_kept() -> None:
    names = [seg(1, n) for n in range(1, 6)] + ["00000002.history"]
    plan = decide([], names, DEFAULTS, datetime(2024, 1, 1, tzinfo=UTC))
    assert plan.bases == [] and plan.oldest_kept is None and plan.wal_removed == []
    assert {d.reason for d in plan.wal} == {KEEP_NO_BASE, KEEP_HISTORY}

    # The newest base backup is damaged: it stays (nothing newer replaces it), and so does the
    # newest good one, which is the oldest kept: WAL is kept from ITS start.
    older = base_at(datetime(2024, 1, 1, tzinfo=UTC), 2, 1)
    good = base_at(datetime(2024, 1, 2, tzinfo=UTC), 3, 1)
    damaged = base_at(datetime(2024, 1, 3, tzinfo=UTC), 4, 1)
    plan = decide(
        [older, good, damaged],
        names,
        Policy(daily=0, weekly=0, monthly=0, yearly=0, keep_last=1),
        datetime(2024, 1, 4, tzinfo=UTC),
        status={damaged.name: "damaged"},
    )
    assert [(d.keep, d.reasons) for d in plan.bases] == [
        (False, ["remove: outside every window"]),
        (True, ["newest good backup", "keep-last 1"]),
        (True, ["damaged: kept until a newer good backup exists"]),
    ]
    assert plan.wal_removed == [seg(1, 1), seg(1, 2)]


# ---- a real repository, through the CLI ----

RETENTION_ENV = {
    "SAFEHOLD_RETENTION_DAILY": "2",
    "SAFEHOLD_RETENTION_WEEKLY": "0",
    "SAFEHOLD_RETENTION_MONTHLY": "2",
    "SAFEHOLD_RETENTION_YEARLY": "0",
    "SAFEHOLD_RETENTION_KEEP_LAST": "1",
}
# (start, WAL position, timeline): daily 2 keeps 06-02 and 06-01, monthly 2 keeps 06-02 and
# 03-20, keep-last 1 keeps 06-02; 01-10 and 03-05 go.
BASES = [
    ("2024-01-10 02:00", 2, 1),
    ("2024-03-05 02:00", 4, 1),
    ("2024-03-20 02:00", 6, 1),
    ("2024-06-01 02:00", 8, 2),
    ("2024-06-02 02:00", 10, 2),
]
SWITCH = 7  # timeline 2 starts in the segment at position 7


def cli(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    environ.update(BACKUP_DIR=str(repo), PYTHONPATH=str(ROOT / "src"), **env)
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=repo.parent,
    )


def push_files(repo: Storage, names: list[str], spool: Path) -> None:
    """Archive each name with the real ``wal.push``: 16 MiB segments (their name repeated, then
    zeros), small .history/.backup/.partial-sized files as PostgreSQL makes them."""
    spool.mkdir(exist_ok=True)
    for name in names:
        path = spool / name
        if wal.SEGMENT_RE.match(name.split(".", 1)[0]) and not name.endswith(".backup"):
            stamp = (name.encode() + b"\n") * 1000
            path.write_bytes(stamp + bytes(wal.SEGMENT_SIZE - len(stamp)))
        else:
            path.write_bytes(f"{name}: START WAL LOCATION ...\n".encode())
        assert not wal.push(repo, path).already
        path.unlink()


def write_base(repo: Storage, start: str, position: int, timeline: int) -> BaseBackup:
    """A base backup as pitr writes it: the archive under base/, then its JSON record."""
    when = datetime.strptime(start, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    body = os.urandom(4096) + start.encode()
    record = base_at(when, position, timeline, size=len(body))
    repo.put_bytes(record.data_key, body)
    repo.put_bytes(record.record_key, pitr.record_bytes(record))
    return record


def pitr_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for folder in ("base", "wal") for p in (root / folder).iterdir()
    }


def data_key(name: str) -> str:
    return f"wal/{name}.zst"


@pytest.fixture
def pitr_repo(tmp_path: Path) -> tuple[LocalStorage, list[BaseBackup], list[str]]:
    repo = LocalStorage(tmp_path / "backups")
    repo.ensure()
    names = [seg(1, n) for n in range(1, SWITCH)] + [seg(1, SWITCH) + ".partial"]
    names += ["00000002.history"] + [seg(2, n) for n in range(SWITCH, 12)]
    names += [f"{seg(tli, pos)}.00000028.backup" for _when, pos, tli in BASES]
    push_files(repo, names, tmp_path / "pg_wal")
    bases = [write_base(repo, *spec) for spec in BASES]
    return repo, bases, names


def test_cli_prune_dry_run_then_prune_base_backups_and_wal(
    pitr_repo: tuple[LocalStorage, list[BaseBackup], list[str]],
) -> None:
    repo, bases, names = pitr_repo
    going_bases = [bases[0], bases[1]]
    going_wal = [seg(1, n) for n in range(1, 6)]
    going_wal += [f"{seg(1, 2)}.00000028.backup", f"{seg(1, 4)}.00000028.backup"]
    # What an interrupted earlier prune left: WAL data without its sidecar (before every kept
    # base backup) and a base archive without its record (older than the newest record).
    repo.put_bytes(data_key(seg(1, 0)), b"left behind")
    repo.put_bytes("base/base_20230101_020000.tar.zst", b"left behind")
    # A base archive newer than every record is a base backup being written: never touched.
    repo.put_bytes("base/base_20990101_000000.tar.zst", b"in progress")
    before = {key: (repo.root / key).read_bytes() for key in pitr_files(repo.root)}

    plan = cli(repo.root, "prune", "--dry-run", "--json", **RETENTION_ENV)
    assert plan.returncode == 0, plan.stderr
    assert {k: (repo.root / k).read_bytes() for k in pitr_files(repo.root)} == before
    (location,) = json.loads(plan.stdout)
    assert location["dry_run"] is True and location["backups"] == []
    assert location["base_removed"] == [b.name for b in going_bases]
    assert location["base_freed_bytes"] == sum(b.size for b in going_bases)
    decisions = {b["name"]: (b["keep"], b["reasons"], b["kind"]) for b in location["base_backups"]}
    assert decisions == {
        bases[0].name: (False, ["remove: outside every window"], "base"),
        bases[1].name: (False, ["remove: outside every window"], "base"),
        bases[2].name: (True, ["monthly 2024-03"], "base"),
        bases[3].name: (True, ["daily 2024-06-01"], "base"),
        bases[4].name: (
            True,
            ["newest good backup", "keep-last 1", "daily 2024-06-02", "monthly 2024-06"],
            "base",
        ),
    }
    starts = {b["name"]: b["start_segment"] for b in location["base_backups"]}
    assert starts[bases[2].name] == seg(1, 6) and starts[bases[4].name] == seg(2, 10)
    reason = f"before the oldest kept base backup {bases[2].name} (starts at {seg(1, 6)})"
    assert location["wal"]["removed"] == [
        {"name": name, "keep": False, "reason": reason} for name in sorted(going_wal)
    ]
    assert location["wal"]["archived"] == len(names)
    assert location["wal"]["kept"] == len(names) - len(going_wal)
    assert location["wal"]["oldest_kept_base"] == bases[2].name
    assert location["wal"]["cleaned"] == [
        "base/base_20230101_020000.tar.zst",
        data_key(seg(1, 0)),
    ]

    text = cli(repo.root, "prune", "--dry-run", **RETENTION_ENV)
    assert text.returncode == 0, text.stderr
    for column in ("NAME", "STARTED (UTC)", "WAL FROM", "DECISION", "REASONS"):
        assert column in text.stdout
    assert "base backups: kept 3, would remove 2" in text.stdout
    assert (
        f"WAL: {len(names)} archived, keep {len(names) - 7} (incl. 1 timeline history), "
        f"remove 7: {seg(1, 1)} … {seg(1, 5)} ({reason})"
    ) in " ".join(text.stdout.split())

    done = cli(repo.root, "prune", "--json", **RETENTION_ENV)
    assert done.returncode == 0, done.stderr
    (location,) = json.loads(done.stdout)
    assert location["dry_run"] is False
    assert f"removed base backup {bases[0].name}" in done.stderr
    assert "removed 7 WAL files" in done.stderr
    kept_bases = bases[2:]
    expected = {key for b in kept_bases for key in (b.record_key, b.data_key)}
    expected.add("base/base_20990101_000000.tar.zst")
    for name in sorted(set(names) - set(going_wal)):
        expected |= {wal.sum_key(name), data_key(name)}
    assert pitr_files(repo.root) == expected
    # What stays is still a working archive: every kept file fetches back intact.
    for name in (seg(1, 6), seg(2, 11), "00000002.history"):
        assert wal.fetch(repo, name, repo.root.parent / "fetched") > 0

    again = cli(repo.root, "prune", "--json", **RETENTION_ENV)
    (location,) = json.loads(again.stdout)
    assert location["base_removed"] == [] and location["wal"]["removed"] == []
    assert pitr_files(repo.root) == expected


def test_cli_list_shows_base_backups(
    pitr_repo: tuple[LocalStorage, list[BaseBackup], list[str]],
) -> None:
    repo, bases, _names = pitr_repo
    (repo.root / bases[1].data_key).unlink()

    listed = cli(repo.root, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == [b.name for b in reversed(bases)]
    newest = rows[0]
    assert newest["kind"] == "base" and newest["status"] == "ok"
    assert newest["size"] == bases[4].size and newest["start_segment"] == seg(2, 10)
    assert newest["created_utc"] == "2024-06-02T02:00:00.000Z" and newest["timeline"] == 2
    assert rows[3]["status"] == "missing"

    text = cli(repo.root, "list")
    assert text.returncode == 0, text.stderr
    assert "base backups (PITR)" in text.stdout
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(bases[4].name))
    assert line.split()[1:5] == ["base", "2024-06-02", "02:00:00", "4.0"]
    assert seg(2, 10) in line and line.split()[-1] == "ok"


def test_cli_prune_applies_to_the_pitr_files_of_an_s3_location(
    s3: SandboxS3, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    remote = s3.storage(bucket, "host-a")
    names = [seg(1, n) for n in range(1, 8)] + ["00000002.history", seg(2, 8)]
    push_files(remote, names, tmp_path / "spool")
    bases = [write_base(remote, *spec) for spec in BASES[:3]]  # 01-10, 03-05, 03-20
    local = LocalStorage(tmp_path / "backups")
    local.ensure()
    config = tmp_path / "safehold.toml"
    config.write_text(
        f'[locations.offsite]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\nprefix = "host-a"\n'
    )
    env = {
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        **RETENTION_ENV,
        "SAFEHOLD_RETENTION_MONTHLY": "0",
    }

    done = cli(local.root, "prune", "--json", **env)
    assert done.returncode == 0, done.stderr
    here, there = json.loads(done.stdout)
    assert "base_backups" not in here  # the local repository has no PITR files
    assert there["location"].startswith("s3://") and there["base_removed"] == [bases[0].name]
    # Daily 2 keeps 03-20 and 03-05: WAL from 03-05's start (position 4) on stays.
    assert [w["name"] for w in there["wal"]["removed"]] == [seg(1, 1), seg(1, 2), seg(1, 3)]
    remaining = set(remote.list("base")) | set(remote.list("wal"))
    expected = {key for b in bases[1:] for key in (b.record_key, b.data_key)}
    for name in names[3:]:
        expected |= {wal.sum_key(name), data_key(name)}
    assert remaining == expected
