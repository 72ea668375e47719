"""``backup.format = "chunked"`` through the commands: backups become chunk store snapshots,
restore puts a live database back from one (also on a new host holding only the store and the
identity), folders are listed, restored in part and exported as the archive tar reads, and
the backup host's public key alone opens nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, drop_databases, execute, fingerprint
from .test_encryption import keygen
from .tree_support import gnu_extract, make_tree, snapshot


def _keys(run_cli: CliRunner, tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the backup host's environment: public key only; a restore host's: both)."""
    identity = tmp_path / "identity.txt"
    public = keygen(run_cli, identity)
    writer = {"SAFEHOLD_FORMAT": "chunked", "SAFEHOLD_ENCRYPTION_RECIPIENTS": public}
    return writer, {**writer, "SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(identity)}


def keep_last(count: int) -> dict[str, str]:
    """Retention that keeps only the newest ``count`` backups of each target."""
    rules = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
    return {
        **{f"SAFEHOLD_RETENTION_{r}": "0" for r in rules},
        "SAFEHOLD_RETENTION_KEEP_LAST": str(count),
    }


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    return done


def test_chunked_database_backups_deduplicate_and_restore_on_a_new_host(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    # About 25 MB of dump: many chunks, so what did not change is seen to be stored once.
    execute(
        db,
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || repeat(md5((g * 7)::text), 6) "
        "AS body FROM generate_series(1, 100000) g",
    )
    first = json.loads(_ok(run_cli("backup", "--json", env=writer)).stdout)
    taken = fingerprint(db)
    second = json.loads(_ok(run_cli("backup", "--json", env=writer)).stdout)
    assert [s["target"] for s in first + second] == [f"database:{db.dbname}"] * 2
    # No seed dump is written; the unchanged database adds only the chunks around the dump's
    # header (its time and table of contents: one or two ~1 MiB chunks of 24 MB) the second time.
    assert not list(repo.root.glob("db_backup_*"))
    assert second[0]["stats"]["new_bytes"] < second[0]["stats"]["bytes"] // 4
    key_file = repo.root / ".safehold" / "keys" / "chunk-id.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=writer)).stdout)
    assert [s["snapshot"] for s in listed] == [first[0]["snapshot"], second[0]["snapshot"]]
    # 'list' and 'status' see a chunked target's snapshots as its backups.
    rows = json.loads(_ok(run_cli("list", "--json", env=writer)).stdout)
    assert [(r["name"], r["compression"]) for r in rows] == [
        (second[0]["snapshot"], "chunked"),
        (first[0]["snapshot"], "chunked"),
    ]
    status = json.loads(run_cli("status", "--json", env=writer).stdout)
    (mine,) = [t for t in status["targets"] if t["target"] == db.dbname]
    assert mine["last_backup"] == second[0]["snapshot"] and mine["good_backups"] == 2
    assert "no good backup" not in mine["reasons"] and mine["age_s"] < 600
    report = json.loads(_ok(run_cli("report", "--json", env=writer)).stdout)
    assert {b["name"] for b in report["backups"]} >= {first[0]["snapshot"], second[0]["snapshot"]}

    # The backup host cannot read its own backups back.
    refused = run_cli("restore", "--database", "latest", env=writer)
    assert refused.returncode != 0 and "identity" in refused.stderr
    execute(db, "DELETE FROM audit_log")
    _ok(run_cli("restore", "--database", "latest", "--drop-previous", env=reader))
    assert fingerprint(db) == taken

    # A drill of the newest backups exports the snapshot and counts that time as recovery.
    third = json.loads(_ok(run_cli("backup", "--json", env=writer)).stdout)[0]["snapshot"]
    drilled = json.loads(_ok(run_cli("drill", "--json", env=reader)).stdout)
    (member,) = drilled["members"]
    assert drilled["outcome"] == "ok" and member["outcome"] == "ok"
    assert member["export_s"] > 0 and member["seconds"] >= member["export_s"]
    exported = json.loads(repo.path(f".safehold/manifests/{member['artifact']}.json").read_text())
    assert exported["facts"]["snapshot"] == third
    status = json.loads(run_cli("status", "--json", env=writer).stdout)
    (mine,) = [t for t in status["targets"] if t["target"] == db.dbname]
    assert mine["last_drill"]["id"] == drilled["id"] and mine["last_drill"]["outcome"] == "ok"

    # A new host: an empty BACKUP_DIR but for the store's objects, no id key, the identity.
    fresh = tmp_path / "new-host" / "backups"
    shutil.copytree(repo.root / "chunks", fresh / "chunks")
    env = {**reader, "BACKUP_DIR": str(fresh)}
    dump = tmp_path / "exported.dump"
    _ok(run_cli("snapshots", "export", second[0]["snapshot"], "-o", str(dump), env=env))
    toc = _ok(subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True))
    assert "TABLE DATA public audit_log" in toc.stdout
    other = f"{db.dbname}_fresh"
    _ok(run_cli("restore", "--database", second[0]["snapshot"], "--target-db", other, env=env))
    assert fingerprint(db, other) == taken
    # What the restore read rests encrypted, as every backup does: the dump and its globals.
    restored = sorted(p.name for p in fresh.glob("db_*_2*"))
    assert [n.split("_")[1] for n in restored] == ["backup", "globals"]
    assert all(n.endswith(".age") for n in restored), restored
    assert not (fresh / ".safehold" / "keys" / "chunk-id.key").exists()
    drop_databases(db, other)
    assert other not in databases(db)


def test_chunked_folder_ls_partial_restore_export_and_keys(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    source = tmp_path / "user-data"
    source.mkdir()

    def own(root: Path) -> None:
        (root / "docs" / "deep" / "note.txt").write_text("the one file\n")

    make_tree(
        source,
        own,
        long_text="long\n",
        steps=(1_000, 7_000),
    )
    made = json.loads(_ok(run_cli("backup", "--path", str(source), "--json", env=writer)).stdout)
    snap = made[0]["snapshot"]
    assert made[0]["target"] == "volume:user-data"
    assert not list(repo.root.glob("volume_*"))

    # Without the identity nothing is listed inside, exported or restored: refused, no file.
    out = tmp_path / "out.tar.gz"
    for args in (("ls", snap), ("export", snap, "-o", str(out))):
        refused = run_cli("snapshots", *args, env=writer)
        assert refused.returncode != 0 and "identity" in refused.stderr, args
    assert not out.exists() and not list(tmp_path.glob("out.tar.gz*"))

    listed = json.loads(_ok(run_cli("snapshots", "ls", snap, "docs", "--json", env=reader)).stdout)
    assert {e["path"] for e in listed} == {"docs", "docs/a.txt", "docs/empty.bin", "docs/deep"}
    one = tmp_path / "one"
    _ok(
        run_cli(
            "snapshots",
            "restore",
            snap,
            "--include",
            "docs/deep/note.txt",
            "--to",
            str(one),
            env=reader,
        )
    )
    assert (one / "docs" / "deep" / "note.txt").read_text() == "the one file\n"
    assert not (one / "secret").exists()

    whole = tmp_path / "whole"
    _ok(run_cli("snapshots", "restore", snap, "--to", str(whole), env=reader))
    assert snapshot(whole, exact=True) == snapshot(source, exact=True)

    _ok(run_cli("snapshots", "export", snap, "-o", str(out), env=reader))
    assert gnu_extract(out, tmp_path / "by-tar") and snapshot(tmp_path / "by-tar") == snapshot(
        source
    )
    # A second export never overwrites the first.
    again = run_cli("snapshots", "export", snap, "-o", str(out), env=reader)
    assert again.returncode != 0 and "exists" in again.stderr


def test_pins_keep_snapshots_from_prune_until_unpinned(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    writer, _ = _keys(run_cli, tmp_path)
    env = {**writer, **keep_last(1)}
    source = tmp_path / "data"
    source.mkdir()
    made = []
    for round_, extra in enumerate(((), ("--keep-until", "2999-01-01"), (), ())):
        (source / "f.txt").write_text(f"round {round_}\n")
        out = _ok(run_cli("backup", "--path", str(source), "--json", *extra, env=env)).stdout
        made.append(json.loads(out)[0]["snapshot"])
    _ok(run_cli("pin", made[0], "--note", "before the upgrade", env=env))

    def listed() -> list[str]:
        rows = json.loads(_ok(run_cli("snapshots", "list", "--json", env=env)).stdout)
        return [row["snapshot"] for row in rows]

    _ok(run_cli("snapshots", "prune", env=env))
    assert listed() == [made[0], made[1], made[3]]  # pinned, pinned until 2999, newest
    # The pins are store objects: a host sharing the store sees them; unpin removes them.
    assert len(list((repo.root / "chunks" / "pins").iterdir())) == 2
    _ok(run_cli("unpin", made[0], env=env))
    _ok(run_cli("snapshots", "prune", env=env))
    assert listed() == [made[1], made[3]]
    missing = run_cli("pin", "20200101T000000Z-0123456789abcdef", env=env)
    assert missing.returncode == 2 and "no snapshot" in missing.stderr
