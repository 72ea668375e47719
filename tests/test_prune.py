"""safehold prune and pin on a real repository with real (small) backups.

Old backups are made through the real write path: ``write_tree_backup`` / ``dump_database``
take the artifact name and start time from their caller, so a test hands them a stamp in the
past and commits them as a backup does (manifest, then the ``latest`` links).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safehold import catalog, naming
from safehold.errors import StorageError, UsageError
from safehold.model import BackupSet, Manifest, null_sink
from safehold.operations._pipeline import commit, repository_session
from safehold.operations.checks.verify import read_verify, verify_backup, verify_key
from safehold.operations.copy import Location, copy_backups, representatives
from safehold.operations.database.backup import BackupOptions, dump_database
from safehold.operations.prune import (
    PINS_DIR,
    PruneResult,
    intent_key,
    pin,
    pin_key,
    prune,
    read_pins,
    unpin,
)
from safehold.operations.volumes.folder import folder_source, volume_artifact, write_tree_backup
from safehold.retention import Policy
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def policy(**counts: int) -> Policy:
    values = {"daily": 0, "weekly": 0, "monthly": 0, "yearly": 0, "keep_last": 0, **counts}
    return Policy(**values)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for index, (name, mtime) in enumerate([("a.txt", 1_600_000_000), ("sub/b.bin", 1_700_000_000)]):
        path = root / name
        path.write_bytes(os.urandom(2000 + index * 1000))
        os.utime(path, (mtime, mtime))
    return root


def old_backup(
    repo: LocalStorage,
    folder: Path,
    when: datetime,
    target: str = "app-data",
    compression: str = "gzip",
    set_id: str | None = None,
) -> Manifest:
    name = volume_artifact(target, when, compression)
    with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
        manifest = write_tree_backup(
            folder_source(folder), target, repo, name, when, compression, null_sink, set_id=set_id
        )
        commit(repo, manifest, null_sink, "")
    return manifest


def snapshot(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            found[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return found


def decided(result: PruneResult) -> dict[str, tuple[bool, list[str]]]:
    return {d.candidate.name: (d.keep, d.reasons) for d in result.decisions}


SCHEDULE = ["2024-01-10 02:00", "2024-03-05 02:00", "2024-03-20 02:00", "2024-06-01 02:00",
            "2024-06-01 14:00", "2024-06-02 02:00"]  # fmt: skip
RULES = policy(daily=2, monthly=2, keep_last=1)
GOING = {"2024-01-10 02:00", "2024-03-05 02:00", "2024-06-01 02:00"}


def history(repo: LocalStorage, folder: Path) -> dict[str, str]:
    """The schedule's backups: when -> artifact name."""
    return {when: old_backup(repo, folder, at(when)).artifact for when in SCHEDULE}


def test_dry_run_changes_nothing_and_gives_every_reason(repo: LocalStorage, folder: Path) -> None:
    names = history(repo, folder)
    before = snapshot(repo.root)
    result = prune(repo, RULES, now=NOW, dry_run=True)
    assert snapshot(repo.root) == before
    assert result.dry_run
    assert result.removed == sorted(names[w] for w in GOING)
    assert result.freed_bytes == sum(repo.size(names[w]) for w in GOING)
    reasons = decided(result)
    assert reasons[names["2024-06-02 02:00"]] == (
        True,
        ["newest good backup", "keep-last 1", "daily 2024-06-02", "monthly 2024-06"],
    )
    assert reasons[names["2024-06-01 14:00"]] == (True, ["daily 2024-06-01"])
    assert reasons[names["2024-03-20 02:00"]] == (True, ["monthly 2024-03"])
    assert reasons[names["2024-06-01 02:00"]] == (False, ["remove: outside every window"])


class RecordingStorage(LocalStorage):
    """The real local storage, noting the order of writes and deletes."""

    def __init__(self, root: Path, fail_on: str = "") -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def put_bytes(self, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        super().put_bytes(key, data)

    def delete(self, key: str) -> None:
        if key == self.fail_on:
            raise PermissionError(13, "Permission denied")
        self.calls.append(("delete", key))
        super().delete(key)


def test_prune_removes_manifest_then_data_and_keeps_links_valid(
    repo: LocalStorage, folder: Path
) -> None:
    names = history(repo, folder)
    going = [names[w] for w in sorted(GOING)]
    # Verify records: the old one goes with its backup; the newest is the last verified copy.
    verify_backup(repo, going[0])
    verify_backup(repo, names["2024-06-02 02:00"])
    sizes = {name: repo.size(name) for name in going}
    recording = RecordingStorage(repo.root)
    result = prune(recording, RULES, now=NOW)
    assert not result.dry_run and result.removed == sorted(going)
    assert result.freed_bytes == sum(sizes.values())
    for name in going:
        steps = [c for c in recording.calls if name in c[1]]
        assert steps == [
            ("put", intent_key(name)),
            ("delete", naming.manifest_key(name)),
            ("delete", name),
            ("delete", verify_key(name)),
            ("delete", intent_key(name)),
        ]
        assert not repo.exists(name) and not repo.exists(naming.manifest_key(name))
    assert read_verify(repo, going[0]) is None
    assert repo.list(".safehold/pruning") == []
    records = catalog.scan(repo)
    assert {r.name for r in records} == set(names.values()) - set(going)
    assert all(r.status == "ok" for r in records)
    link = repo.path("volume_app-data_latest.tar.gz")
    assert link.resolve() == repo.path(names["2024-06-02 02:00"]).resolve()
    # Pruning again removes nothing: periods with backups, not calendar time.
    again = prune(repo, RULES, now=datetime(2040, 1, 1, tzinfo=UTC))
    assert again.removed == [] and again.cleaned == []


def test_an_interrupted_prune_is_finished_by_the_next_one(repo: LocalStorage, folder: Path) -> None:
    names = history(repo, folder)
    victim = names["2024-01-10 02:00"]
    failing = RecordingStorage(repo.root, fail_on=victim)
    with pytest.raises(StorageError, match="cannot remove"):
        prune(failing, RULES, now=NOW)
    # The manifest went first: the file is left without one, but its intent record says it is ours.
    assert repo.exists(victim) and not repo.exists(naming.manifest_key(victim))
    assert repo.exists(intent_key(victim))
    plan = prune(repo, RULES, now=NOW, dry_run=True)
    assert victim not in decided(plan)  # an orphan, not a foreign file
    assert victim in plan.cleaned and intent_key(victim) in plan.cleaned
    done = prune(repo, RULES, now=NOW)
    assert not repo.exists(victim) and not repo.exists(intent_key(victim))
    assert {r.name for r in catalog.scan(repo)} == set(names.values()) - {names[w] for w in GOING}
    assert victim in done.cleaned


def test_pin_protects_until_unpinned(repo: LocalStorage, folder: Path) -> None:
    names = history(repo, folder)
    oldest = names["2024-01-10 02:00"]
    made = pin(repo, oldest, note="before the migration")
    assert made.artifact == oldest and "@" in made.by
    assert read_pins(repo)[oldest].note == "before the migration"
    kept = prune(repo, RULES, now=NOW)
    assert decided(kept)[oldest] == (True, ["pinned"])
    assert repo.exists(oldest)
    payload = kept.to_json()["backups"]
    assert next(b for b in payload if b["name"] == oldest)["pin"]["note"] == "before the migration"

    assert unpin(repo, oldest) is True
    assert unpin(repo, oldest) is False  # not pinned any more: said, not an error
    prune(repo, RULES, now=NOW)
    assert not repo.exists(oldest)
    with pytest.raises(UsageError, match="no backup named"):
        pin(repo, oldest)
    with pytest.raises(UsageError, match="no backup or pin"):
        unpin(repo, "volume_nope_20240101_000000.tar.gz")
    # A latest link name pins the backup it points at.
    assert pin(repo, "volume_app-data_latest.tar.gz").artifact == names["2024-06-02 02:00"]


def test_sets_stay_whole_and_empty_set_records_go(repo: LocalStorage, folder: Path) -> None:
    def full(when: str) -> BackupSet:
        stamp = naming.stamp(at(when))
        members = tuple(
            old_backup(repo, folder, at(when), target, set_id=stamp).artifact
            for target in ("app-data", "user-data")
        )
        record = BackupSet(stamp, at(when), at(when), members, None, ("app-data", "user-data"), "t")
        catalog.write_set(repo, record)
        return record

    old, kept = full("2023-01-01 03:00"), full("2024-01-01 03:00")
    newer = old_backup(repo, folder, at("2024-06-01 03:00"), "app-data").artifact
    result = prune(repo, policy(keep_last=1), now=NOW)
    reasons = decided(result)
    assert reasons[newer][0]
    assert reasons[kept.members[1]] == (True, ["newest good backup", "keep-last 1"])
    assert reasons[kept.members[0]] == (True, [f"member of kept set {kept.id}"])
    assert sorted(result.removed) == sorted(old.members)
    assert result.sets_removed == [old.id]
    assert [s.id for s in catalog.read_sets(repo)] == [kept.id]


def test_last_verified_copy_orphans_foreign_files_and_other_formats(
    repo: LocalStorage, folder: Path
) -> None:
    verified = old_backup(repo, folder, at("2024-01-01 02:00")).artifact
    assert verify_backup(repo, verified).ok
    for when in ("2024-02-01 02:00", "2024-03-01 02:00"):
        old_backup(repo, folder, at(when))
    newest = old_backup(repo, folder, at("2024-04-01 02:00"), compression="zstd").artifact
    gone = old_backup(repo, folder, at("2024-01-15 02:00"), target="tmp-data")
    for key in (gone.artifact, naming.manifest_key(gone.artifact)):  # removed by hand
        repo.delete(key)
    repo.put_bytes(verify_key(gone.artifact), b"{}")
    repo.put_bytes(f"{PINS_DIR}/{gone.artifact}.json", b"{}")
    foreign = "volume_app-data_20200101_000000.tar.gz"
    repo.path(foreign).write_bytes(b"somebody else's file")
    stale = repo.path(f".{newest}.partial-999999999-abcd")  # a dead writer's temp file
    stale.write_bytes(b"half")

    result = prune(repo, policy(keep_last=1), now=NOW)
    reasons = decided(result)
    assert reasons[verified] == (True, ["last verified copy"])
    assert reasons[newest] == (True, ["newest good backup", "keep-last 1"])
    assert reasons[foreign][0] and repo.exists(foreign)
    assert len(result.removed) == 2
    assert not stale.exists()
    assert set(result.cleaned) == {verify_key(gone.artifact), pin_key(gone.artifact)}
    assert not repo.exists(verify_key(gone.artifact))
    # The seed's name follows the newest backup whatever its format (issue 11) ...
    gz_link = repo.path("volume_app-data_latest.tar.gz")
    assert gz_link.resolve() == repo.path(newest).resolve()
    # ... so removing the last .tar.gz backup leaves no link pointing at it.
    unverified = prune(repo, policy(keep_last=1), now=NOW)
    assert unverified.removed == []
    repo.delete(verify_key(verified))
    last = prune(repo, policy(keep_last=1), now=NOW)
    assert last.removed == [verified]
    assert last.links_removed == []
    assert gz_link.resolve() == repo.path(newest).resolve()
    zst_link = repo.path("volume_app-data_latest.tar.zst")
    assert zst_link.resolve() == repo.path(newest).resolve()


def test_an_all_zero_policy_and_a_missing_repository_are_refused(
    repo: LocalStorage, folder: Path, tmp_path: Path
) -> None:
    old_backup(repo, folder, at("2024-01-01 02:00"))
    before = snapshot(repo.root)
    with pytest.raises(UsageError, match="keeps nothing"):
        prune(repo, policy(), now=NOW)
    assert snapshot(repo.root) == before
    with pytest.raises(UsageError, match="no backup repository"):
        prune(LocalStorage(tmp_path / "nowhere"), Policy(), now=NOW)


def test_database_links_follow_the_kept_backups(
    repo: LocalStorage, db: PgTarget, folder: Path
) -> None:
    made = []
    for when, compression in (("2024-05-01 02:00", "gzip"), ("2024-06-01 02:00", "gzip"),
                              ("2024-06-02 02:00", "zstd")):  # fmt: skip
        name = naming.database_artifact(at(when), compression)
        with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
            options = BackupOptions(compression=compression)  # type: ignore[arg-type]
            manifest = dump_database(db, repo, name, at(when), options, null_sink)
            commit(repo, manifest, null_sink, "")
        made.append(name)
    # The seed's names follow the newest backup whatever its format (issue 11).
    assert repo.path("db_backup_latest.sql").resolve().name == made[2]
    result = prune(repo, policy(daily=1, keep_last=1), now=NOW)
    assert sorted(r for r in result.removed if r.startswith("db_backup_")) == sorted(made[:2])
    for link in naming.DB_LATEST_LINKS:
        assert repo.path(link).resolve().name == made[2]
    assert repo.path("db_backup_latest.sql.zst").resolve().name == made[2]
    assert decided(result)[made[2]][1][0] == "newest good backup"


# --- the command line ---------------------------------------------------------------------------


def cli(repo: LocalStorage, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    environ.update(BACKUP_DIR=str(repo.root), PYTHONPATH=str(ROOT / "src"), **env)
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=repo.root.parent,
    )


RETENTION_ENV = {
    "SAFEHOLD_RETENTION_DAILY": "2",
    "SAFEHOLD_RETENTION_WEEKLY": "0",
    "SAFEHOLD_RETENTION_MONTHLY": "2",
    "SAFEHOLD_RETENTION_YEARLY": "0",
    "SAFEHOLD_RETENTION_KEEP_LAST": "1",
}


@pytest.mark.slow
def test_cli_prune_pin_and_unpin(repo: LocalStorage, folder: Path) -> None:
    assert cli(repo, "prune").returncode == 2  # no repository yet
    names = history(repo, folder)
    oldest = names["2024-01-10 02:00"]
    before = snapshot(repo.root)

    plan = cli(repo, "prune", "--dry-run", **RETENTION_ENV)
    assert plan.returncode == 0, plan.stderr
    assert snapshot(repo.root) == before
    for column in ("NAME", "TARGET", "CREATED (UTC)", "DECISION", "REASONS"):
        assert column in plan.stdout
    assert "remove: outside every window" in plan.stdout and "monthly 2024-03" in plan.stdout
    assert "would remove 3 backups" in plan.stdout

    pinned = cli(repo, "pin", oldest, "--note", "audit")
    assert pinned.returncode == 0, pinned.stderr
    assert f"pinned {oldest}" in pinned.stderr
    listed = json.loads(cli(repo, "pin", "--json").stdout)
    assert [(p["artifact"], p["note"], p["present"]) for p in listed] == [(oldest, "audit", True)]
    assert cli(repo, "pin", "volume_x_20200101_000000.tar.gz").returncode == 2

    as_json = cli(repo, "prune", "--json", **RETENTION_ENV)
    assert as_json.returncode == 0, as_json.stderr
    (location,) = json.loads(as_json.stdout)
    assert location["location"] == str(repo.root) and location["dry_run"] is False
    assert len(location["removed"]) == 2 and oldest not in location["removed"]
    entry = next(b for b in location["backups"] if b["name"] == oldest)
    assert entry["keep"] and entry["reasons"] == ["pinned"] and entry["pin"]["note"] == "audit"

    unpinned = cli(repo, "unpin", oldest)
    assert unpinned.returncode == 0 and f"unpinned {oldest}" in unpinned.stderr
    done = cli(repo, "prune", **RETENTION_ENV)
    assert done.returncode == 0 and "removed 1 backups" in done.stdout
    assert not repo.exists(oldest)

    zero = dict.fromkeys(RETENTION_ENV, "0")
    refused = cli(repo, "prune", **zero)
    assert refused.returncode == 2
    assert "error: the retention policy keeps nothing" in refused.stderr


# --- backup --pin / --keep-until, and the archive's monthly representatives -------------------


def test_backup_keep_until_is_kept_through_the_date_then_pruned(
    repo: LocalStorage, folder: Path
) -> None:
    repo.ensure()
    today = datetime.now(UTC)
    until = (today + timedelta(days=10)).date()
    done = cli(repo, "backup", "--path", str(folder), "--keep-until", until.isoformat())
    assert done.returncode == 0, done.stderr
    (made,) = [Path(line).name for line in done.stdout.splitlines()]
    end = datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
    assert read_pins(repo)[made].until == end  # through the whole day named
    assert f"pinned {made}: prune keeps it until" in done.stderr
    newer = old_backup(repo, folder, today + timedelta(days=1), target=folder.name).artifact

    during = prune(repo, policy(keep_last=1), now=end - timedelta(minutes=1))
    assert decided(during)[made] == (True, [f"pinned until {end:%Y-%m-%d %H:%M} UTC"])
    assert repo.exists(made)
    after = prune(repo, policy(keep_last=1), now=end)
    assert after.removed == [made] and not repo.exists(made) and repo.exists(newer)
    assert made not in read_pins(repo)  # the pin went with its backup

    both = cli(repo, "backup", "--path", str(folder), "--pin", "--keep-until", "2999-01-01")
    assert both.returncode == 2 and "not both" in both.stderr
    past = cli(repo, "backup", "--path", str(folder), "--keep-until", "2001-01-01")
    assert past.returncode == 2 and "not in the future" in past.stderr


def test_backup_all_pin_pins_every_member_of_the_set(repo: LocalStorage, folder: Path) -> None:
    other = folder.parent / "uploads"
    other.mkdir()
    (other / "u.bin").write_bytes(os.urandom(500))
    done = cli(repo, "backup", "--all", "--no-database", "--path", str(folder), "--path",
               str(other), "--pin", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pins = read_pins(repo)
    assert sorted(pins) == sorted(result["members"]) and len(pins) == 2
    assert all(p.until is None and p.note == "backup --pin" for p in pins.values())
    listed = cli(repo, "pin")
    assert "for good" in listed.stdout and "UNTIL (UTC)" in listed.stdout


def test_the_archive_copies_each_finished_months_representatives(
    repo: LocalStorage, folder: Path, tmp_path: Path
) -> None:
    times = ["2024-09-03 02:00", "2024-09-28 02:00", "2024-10-01 02:00", "2024-10-30 02:00",
             "2024-11-02 02:00", "2024-11-02 14:00", "2024-12-01 02:00"]  # fmt: skip
    made = {when: old_backup(repo, folder, at(when)).artifact for when in times}
    archive = LocalStorage(tmp_path / "archive")
    archive.ensure()
    now = at("2024-12-01 04:00")  # the archive job's slot: November has just finished

    chosen = representatives(repo, "monthly", now)

    expected = [made[w] for w in ("2024-09-28 02:00", "2024-10-30 02:00", "2024-11-02 14:00")]
    assert chosen == expected
    copied = copy_backups(repo, Location("archive", archive), chosen)
    assert copied.copied == expected
    assert sorted(r.name for r in catalog.scan(archive)) == sorted(expected)
    # Next month only December's is new; the others are there already.
    later = representatives(repo, "monthly", at("2025-01-01 04:00"))
    again = copy_backups(repo, Location("archive", archive), later)
    assert again.copied == [made["2024-12-01 02:00"]] and again.skipped == expected
