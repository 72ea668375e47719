"""safehold verify: real backups (the PostgreSQL sandbox, real folders), really damaged.

Each case damages a copy of a backup made for this module and checks that the right level
catches it with the right message: quick reads the file once against the manifest's size and
sha256; full also decompresses and reads it as a dump (pg_restore) or an archive (tar).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from safehold import catalog, naming
from safehold.errors import LockBusy, UsageError
from safehold.lock import repository_lock
from safehold.model import Event
from safehold.operations.checks.verify import (
    LEVELS,
    VerifyResult,
    read_verify,
    verify_all,
    verify_backup,
    verify_key,
    verify_newest,
)
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.volumes.folder import backup_tree
from safehold.sandbox import SandboxCluster, load_sample
from safehold.storage import LocalStorage

from .conftest import SAMPLE_USERS, CliRunner, drop_databases

KINDS = ["db-gzip", "db-zstd", "db-none", "volume-gzip", "volume-zstd"]
OLD = "20200101_000000"
RECORD_KEYS = {"artifact", "kind", "target", "level", "outcome", "checked_at", "duration_s",
               "bytes_read", "error", "hint", "found", "format"}  # fmt: skip


def make_folder(root: Path) -> None:
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "sub" / "b.bin").write_bytes(os.urandom(400_000))
    (root / "sub" / "c.txt").write_bytes(b"".join(b"line %d\n" % i for i in range(20_000)))
    os.link(root / "a.txt", root / "sub" / "a-again.txt")  # counted once in bytes
    os.symlink("sub/b.bin", root / "link")


@pytest.fixture(scope="module")
def templates(
    pg: SandboxCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """One repository per kind, each holding one good backup; tests damage copies."""
    dbname = f"t_verify_{secrets.token_hex(3)}"
    load_sample(pg.target, dbname, users=SAMPLE_USERS)
    made: dict[str, Path] = {}
    try:
        for compression in ("gzip", "zstd", "none"):
            root = tmp_path_factory.mktemp(f"db-{compression}") / "backups"
            options = BackupOptions(compression=compression)
            backup_database(pg.target.with_db(dbname), LocalStorage(root), options)
            made[f"db-{compression}"] = root
        folder = tmp_path_factory.mktemp("folder") / "files"
        folder.mkdir()
        make_folder(folder)
        for compression in ("gzip", "zstd"):
            root = tmp_path_factory.mktemp(f"volume-{compression}") / "backups"
            backup_tree(folder, "files", LocalStorage(root), compression=compression)
            made[f"volume-{compression}"] = root
        yield made
    finally:
        drop_databases(pg.target, dbname)


Copy = Callable[[str], tuple[LocalStorage, str]]


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    """A private copy of a template repository, and the name of its one backup."""

    def make(kind: str) -> tuple[LocalStorage, str]:
        root = tmp_path / kind / "backups"
        if not root.exists():
            shutil.copytree(templates[kind], root, symlinks=True)
        storage = LocalStorage(root)
        (name,) = [key for key in storage.list() if _backup(key) and OLD not in key]
        return storage, name

    return make


def _backup(key: str) -> bool:
    """A database or volume backup (not the globals a dump writes beside it)."""
    parsed = naming.parse(key)
    return parsed is not None and parsed.kind in ("database", "volume")


def manifest_json(storage: LocalStorage, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(storage.read_bytes(naming.manifest_key(name)))
    return data


def edit_manifest(storage: LocalStorage, name: str, **changes: Any) -> None:
    data = manifest_json(storage, name)
    for key, value in changes.items():
        if key in ("tables", "files", "bytes"):
            data["facts"][key] = value
        else:
            data[key] = value
    storage.put_bytes(naming.manifest_key(name), json.dumps(data).encode())


def rehash(storage: LocalStorage, name: str) -> None:
    """Make the manifest agree with the file again, as a forger (or a bit-rot-in-RAM) would."""
    body = storage.path(name).read_bytes()
    digests = {"sha256": hashlib.sha256(body).hexdigest()}
    if manifest_json(storage, name).get("blake3"):
        digests["blake3"] = blake3.blake3(body).hexdigest()
    edit_manifest(storage, name, size=len(body), **digests)


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size * 2 // 3)


def append_byte(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"\0")


def cut_head(path: Path) -> None:
    os.truncate(path, 40)  # inside the dump's header and table of contents


def append_junk(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"not a zstd frame")


def clone(storage: LocalStorage, name: str, stamp: str = OLD) -> str:
    """A copy of a backup under an older name: a second backup of the same target."""
    parsed = naming.parse(name)
    assert parsed is not None
    new = name.replace(naming.stamp(parsed.created), stamp)
    shutil.copyfile(storage.path(name), storage.path(new))
    data = manifest_json(storage, name)
    data.update(artifact=new, started_at="2020-01-01T00:00:00Z", finished_at="2020-01-01T00:01:00Z")
    storage.put_bytes(naming.manifest_key(new), json.dumps(data).encode())
    return new


def check(storage: LocalStorage, name: str, level: str) -> VerifyResult:
    return verify_backup(storage, name, level)  # type: ignore[arg-type]


# --- good backups ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_good_backups_pass_quick_and_full(copy: Copy, kind: str) -> None:
    storage, name = copy(kind)
    manifest = catalog.read_manifest(storage, name)
    assert manifest is not None
    for level in LEVELS:
        events: list[Event] = []
        result = verify_backup(storage, name, level, events.append)  # type: ignore[arg-type]
        assert result.ok, result.error
        assert (result.level, result.outcome, result.error) == (level, "ok", None)
        assert result.bytes_read == manifest.size
        assert result.found["sha256"] == manifest.sha256
        assert any(e.kind == "progress" and e.data["final"] for e in events)
        assert any(e.kind == "verify" and ": ok (" in e.message for e in events)
        recorded = read_verify(storage, name)
        assert recorded is not None and (recorded.level, recorded.outcome) == (level, "ok")
    if kind.startswith("db"):
        assert result.found["tables"] == len(manifest.tables) == 4
        assert result.found["toc_entries"] > len(manifest.tables)
    else:
        facts = manifest.facts
        assert {k: result.found[k] for k in ("files", "bytes", "hardlinks", "symlinks")} == {
            k: facts[k] for k in ("files", "bytes", "hardlinks", "symlinks")
        }
        assert (facts["hardlinks"], facts["symlinks"], result.found["dirs"]) == (1, 1, 3)


# --- damage the checksum pass catches -------------------------------------------------------

SIZE = "bytes on disk, the manifest says"
SHA = "does not match the manifest's"
DAMAGE: dict[str, tuple[Callable[[LocalStorage, str], None], str]] = {
    "flipped byte": (lambda s, n: flip_middle(s.path(n)), SHA),
    "truncated": (lambda s, n: truncate(s.path(n)), SIZE),
    "appended byte": (lambda s, n: append_byte(s.path(n)), SIZE),
    "edited sha256": (lambda s, n: edit_manifest(s, n, sha256="0" * 64), SHA),
    "edited size": (lambda s, n: edit_manifest(s, n, size=manifest_json(s, n)["size"] + 1), SIZE),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_is_caught_by_quick_and_by_full(copy: Copy, kind: str, case: str) -> None:
    storage, name = copy(kind)
    damage, message = DAMAGE[case]
    damage(storage, name)
    for level in LEVELS:
        result = check(storage, name, level)
        assert result.outcome == "failed", (level, result)
        assert result.error is not None and name in result.error and message in result.error
        assert result.error.startswith(f"backup {name} is damaged")
        assert result.hint and "older backup" in result.hint


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind.startswith("db")])
def test_a_wrong_blake3_is_caught_as_the_restore_would_catch_it(copy: Copy, kind: str) -> None:
    """A database dump's manifest also holds the BLAKE3 a restore checks before any SQL runs:
    verify checks it too, so a backup it calls good is one a restore accepts."""
    storage, name = copy(kind)
    assert manifest_json(storage, name)["blake3"]
    edit_manifest(storage, name, blake3="0" * 64)
    for level in LEVELS:
        result = check(storage, name, level)
        assert result.outcome == "failed", (level, result)
        assert result.error and result.error.startswith(f"backup {name} is damaged: blake3")


def test_artifact_missing_with_its_manifest_present(copy: Copy) -> None:
    storage, name = copy("db-gzip")
    storage.delete(name)
    for level in LEVELS:
        result = check(storage, name, level)
        assert result.outcome == "failed" and result.bytes_read == 0
        assert result.error == (
            f"backup {name} is missing: its manifest is in the repository but the file is not"
        )
        assert result.hint and naming.manifest_key(name) in result.hint


def test_unreadable_or_misplaced_manifest_fails(copy: Copy) -> None:
    storage, name = copy("volume-gzip")
    storage.put_bytes(naming.manifest_key(name), b"{not json")
    result = check(storage, name, "quick")
    assert result.outcome == "failed" and "manifest" in (result.error or "")
    assert "unreadable" in (result.error or "")

    storage, name = copy("db-zstd")
    edit_manifest(storage, name, artifact="db_backup_20200101_000000.sql.zst")
    result = check(storage, name, "quick")
    assert result.outcome == "failed"
    assert result.error == (
        f"backup {name} is damaged: its manifest names db_backup_20200101_000000.sql.zst"
    )


# --- damage only the full read catches ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("db-gzip", {"tables": {"app.users": 1, "app.ghost": 3}}, "tables missing from the dump: "
         "app.ghost; tables in the dump but not in the manifest: app.containers, app.files, "
         "public.audit_log"),
        ("db-zstd", {"tables": {}}, "tables in the dump but not in the manifest: app.containers"),
        ("db-none", {"tables": "app.users"}, "records no table list"),
        ("volume-gzip", {"files": 99}, "(files: 3, expected 99)"),
        ("volume-zstd", {"bytes": 1}, "bytes: "),
    ],
)  # fmt: skip
def test_edited_facts_with_a_matching_checksum_are_caught_only_by_full(
    copy: Copy, kind: str, edit: dict[str, Any], message: str
) -> None:
    storage, name = copy(kind)
    edit_manifest(storage, name, **edit)
    assert check(storage, name, "quick").ok  # the sha256 still matches the file
    result = check(storage, name, "full")
    assert result.outcome == "failed"
    assert result.error is not None and message in result.error, result.error
    assert result.hint


@pytest.mark.parametrize(
    ("kind", "damage", "message"),
    [
        ("db-gzip", truncate, "pg_restore cannot read it to the end"),
        ("db-none", cut_head, "pg_restore cannot read its table of contents"),
        ("db-zstd", append_junk, "it does not decompress: no zstd frame starts here"),
        ("db-zstd", truncate, "it does not decompress: the stream ends inside a frame"),
        ("volume-gzip", flip_middle, "damaged"),
        ("volume-gzip", truncate, "damaged"),
        ("volume-zstd", truncate, "damaged"),
    ],
)
def test_broken_content_behind_a_rewritten_manifest_is_caught_by_full(
    copy: Copy, kind: str, damage: Callable[[Path], None], message: str
) -> None:
    """Structure, not every byte: zstd frames carry no content checksum, so a flipped byte in
    a zstd dump's data is only caught by the sha256 (gzip's CRC catches it in an archive)."""
    storage, name = copy(kind)
    damage(storage.path(name))
    rehash(storage, name)
    assert check(storage, name, "quick").ok
    result = check(storage, name, "full")
    assert result.outcome == "failed"
    assert result.error is not None and name in result.error and message in result.error
    assert result.bytes_read == storage.size(name)  # read to the end all the same


# --- files without a manifest ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["db-gzip", "db-zstd", "volume-gzip", "volume-zstd"])
def test_a_file_without_manifest_is_unverifiable_and_full_still_reads_it(
    copy: Copy, kind: str
) -> None:
    storage, name = copy(kind)
    storage.delete(naming.manifest_key(name))
    quick = check(storage, name, "quick")
    assert quick.outcome == "unverifiable" and quick.bytes_read == 0
    assert quick.error is not None
    assert quick.error.startswith(f"{name} has no manifest (unverified/foreign)")
    assert "no checksum" in quick.error and "--level full" in quick.error
    full = check(storage, name, "full")
    assert full.outcome == "unverifiable" and full.bytes_read == storage.size(name)
    what = "dump" if kind.startswith("db") else "archive"
    assert full.error is not None and f"it reads as a complete {what}" in full.error
    assert full.hint and "trust" in full.hint


def test_a_foreign_file_that_does_not_parse_fails_full(copy: Copy) -> None:
    storage, _ = copy("db-gzip")
    fake = f"db_backup_{OLD}.sql"
    storage.path(fake).write_bytes(b"-- a plain SQL dump, not pg_dump -Fc\nSELECT 1;\n")
    assert check(storage, fake, "quick").outcome == "unverifiable"
    result = check(storage, fake, "full")
    assert result.outcome == "failed"
    assert result.error is not None
    assert result.error.startswith(f"{fake} is not a PostgreSQL custom-format dump")

    volume = f"volume_files_{OLD}.tar.gz"
    storage.path(volume).write_bytes(b"\x1f\x8b not really gzip")
    result = check(storage, volume, "full")
    assert result.outcome == "failed" and "damaged" in (result.error or "")


# --- which backups, records, lock -----------------------------------------------------------


def merged(copy: Copy) -> tuple[LocalStorage, dict[str, str]]:
    """A repository with two backups of the database and two of the volume 'files'."""
    storage, db_new = copy("db-gzip")
    source, volume_new = copy("volume-gzip")
    for key in (volume_new, naming.manifest_key(volume_new)):
        shutil.copyfile(source.path(key), storage.path(key))
    names = {"db_old": clone(storage, db_new), "db_new": db_new}
    names.update(volume_old=clone(storage, volume_new), volume_new=volume_new)
    (names["globals"],) = catalog.companions(catalog.read_manifest(storage, db_new))
    return storage, names


def test_default_checks_the_newest_of_each_target_even_when_it_is_damaged(copy: Copy) -> None:
    storage, names = merged(copy)
    results = verify_newest(storage, "quick")
    newest = [names["db_new"], names["volume_new"], names["globals"]]  # the dump's globals too
    assert sorted(r.artifact for r in results) == sorted(newest)
    assert all(r.ok for r in results)

    flip_middle(storage.path(names["db_new"]))
    results = verify_newest(storage, "full")
    by_name = {r.artifact: r for r in results}
    assert set(by_name) == set(newest)  # not the older good one
    assert by_name[names["db_new"]].outcome == "failed"
    assert by_name[names["volume_new"]].ok


def test_all_goes_on_after_failures_and_reports_every_backup(copy: Copy) -> None:
    storage, names = merged(copy)
    truncate(storage.path(names["db_old"]))
    storage.delete(names["volume_old"])  # its manifest stays: "missing"
    foreign = f"volume_files_{'20210101_000000'}.tar.gz"
    shutil.copyfile(storage.path(names["volume_new"]), storage.path(foreign))
    events: list[Event] = []
    results = verify_all(storage, "full", events.append)
    outcome = {r.artifact: r.outcome for r in results}
    assert outcome == {
        names["db_old"]: "failed",
        names["volume_old"]: "failed",
        foreign: "unverifiable",
        names["globals"]: "ok",
        names["db_new"]: "ok",
        names["volume_new"]: "ok",
    }
    oldest_first = [r.artifact for r in results][:2]
    assert oldest_first == [names["db_old"], names["volume_old"]]
    errors = [e for e in events if e.kind == "verify" and e.level == "error"]
    assert len(errors) == 2 and all("hint:" in e.message for e in errors)
    assert {n: read_verify(storage, n).outcome for n in outcome} == outcome  # type: ignore[union-attr]


def test_results_are_recorded_and_read_back(copy: Copy) -> None:
    storage, name = copy("volume-zstd")
    assert read_verify(storage, name) is None
    check(storage, name, "full")
    flip_middle(storage.path(name))
    check(storage, name, "quick")
    record = json.loads(storage.path(verify_key(name)).read_text())
    assert set(record) == RECORD_KEYS
    assert (record["level"], record["outcome"], record["format"]) == ("quick", "failed", 1)
    assert record["checked_at"].endswith("Z") and record["bytes_read"] == storage.size(name)
    last = read_verify(storage, name)
    assert last is not None and last.outcome == "failed" and last.error == record["error"]
    assert last.to_json()["checked_at"] == record["checked_at"]
    assert oct(storage.path(verify_key(name)).stat().st_mode & 0o777) == oct(0o600)
    storage.put_bytes(verify_key(name), b"garbage")
    assert read_verify(storage, name) is None  # advice only: never a reason to fail


def test_names_links_paths_and_unknown_names(copy: Copy, tmp_path: Path) -> None:
    storage, name = copy("db-gzip")
    assert verify_backup(storage, "db_backup_latest.sql").artifact == name
    assert verify_backup(storage, str(storage.path(name))).artifact == name
    with pytest.raises(UsageError, match="no backup named"):
        verify_backup(storage, "db_backup_20990101_000000.sql")
    with pytest.raises(UsageError, match="not in the repository"):
        verify_backup(storage, str(tmp_path / "elsewhere" / name))
    with pytest.raises(UsageError, match="newest backup of every target"):
        verify_backup(storage, "latest")
    with pytest.raises(UsageError, match="no backup repository"):
        verify_all(LocalStorage(tmp_path / "nowhere"))


def test_verify_holds_the_repository_lock_shared(copy: Copy) -> None:
    storage, name = copy("volume-gzip")
    with repository_lock(storage.root, exclusive=False, timeout=1, purpose="a restore"):
        assert verify_backup(storage, name, lock_timeout=1).ok
    exclusive = repository_lock(storage.root, exclusive=True, timeout=1, purpose="a backup")
    with exclusive, pytest.raises(LockBusy, match="locked by"):
        verify_backup(storage, name, lock_timeout=0.3)


# --- the command ----------------------------------------------------------------------------


def test_cli_exit_codes_messages_and_json(run_cli: CliRunner, repo: LocalStorage) -> None:
    assert run_cli("verify").returncode == 2  # nothing to verify yet
    assert run_cli("backup").returncode == 0
    ok = run_cli("verify", "--level", "full")
    assert ok.returncode == 0, ok.stderr
    (name,) = [key for key in repo.list() if _backup(key)]
    assert name in ok.stdout and "ok" in ok.stdout

    as_json = run_cli("verify", "latest", "--json")
    assert as_json.returncode == 0, as_json.stderr
    result, companion = json.loads(as_json.stdout)  # the dump and the globals beside it
    assert companion["kind"] == "globals" and companion["outcome"] == "ok"
    assert set(result) == RECORD_KEYS and result["outcome"] == "ok"
    assert result["artifact"] == name and result["kind"] == "database"

    flip_middle(repo.path(name))
    bad = run_cli("verify", name)
    assert bad.returncode == 6
    assert f"error: backup {name} is damaged: sha256" in bad.stderr
    assert "hint: restore an older backup" in bad.stderr
    assert "failed" in bad.stdout

    bad_json = run_cli("verify", "--all-backups", "--level", "full", "--json")
    assert bad_json.returncode == 6
    # One JSON document, the results: the damaged dump, and its globals still good.
    outcomes = {r["artifact"]: r for r in json.loads(bad_json.stdout)}
    assert outcomes[companion["artifact"]]["outcome"] == "ok"
    result = outcomes[name]
    assert result["outcome"] == "failed" and result["level"] == "full"
    assert "sha256" in result["error"] and "is damaged: sha256" in bad_json.stderr

    assert run_cli("verify", name, "--all-backups").returncode == 2
