""" "latest" is the newest good backup of a target (issue 11): safety copies are their own kind,
globals go with their dump, the fixed names follow the newest backup in every format, and
``safehold cat`` gives the plain content of any of them, checked against the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pyrage  # type: ignore[import-untyped]
import pytest
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog, naming
from safehold.errors import UsageError
from safehold.model import Event, Manifest, null_sink
from safehold.operations._pipeline import commit, repository_session
from safehold.operations.database.backup import BackupOptions, dump_database
from safehold.operations.prune import pin, prune
from safehold.operations.volumes.folder import folder_source, volume_artifact, write_tree_backup
from safehold.retention import Candidate, Policy, decide
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT, CliRunner, execute, fingerprint, run_in, seed_env

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def at(days_ago: float) -> datetime:
    return (NOW - timedelta(days=days_ago)).replace(microsecond=0)


def keep_one(**extra: int) -> Policy:
    return Policy(daily=0, weekly=0, monthly=0, yearly=0, keep_last=1, **extra)


def links(repo: LocalStorage) -> dict[str, str]:
    """Every fixed name in the repository and the artifact it points at."""
    return {
        p.name: os.readlink(p)
        for p in repo.root.iterdir()
        if p.is_symlink() and naming.latest_link_of(p.name)
    }


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def cat(
    db: PgTarget, repo: LocalStorage, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", "cat", *args],
        env={**seed_env(db, repo.root), **(env or {})},
        capture_output=True,
        timeout=120,
        check=False,
    )


def piped(
    db: PgTarget, repo: LocalStorage, pipeline: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A shell pipeline as an operator writes it, ``safehold`` being this checkout's."""
    full = {**seed_env(db, repo.root), **env}
    full["PATH"] = f"{Path(sys.executable).parent}:{full.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {pipeline}"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def toc(listing: str) -> list[str]:
    """pg_restore --list without its header (which names the archive file it read)."""
    return [line for line in listing.splitlines() if line and not line.startswith(";")]


# --- safety copies ------------------------------------------------------------------------------


def test_a_volume_restore_keeps_a_safety_copy_that_is_never_latest(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    s3: SandboxS3,
    tmp_path: Path,
) -> None:
    name = str(volume.name)
    bucket = s3.bucket()
    config = tmp_path / "safehold.toml"
    config.write_text(
        f'[locations.offsite]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\nprefix = "h"\n'
        "copy_after_backup = false\n"  # so that copy --latest is what chooses
    )
    env = {
        "DOCKER_HOST": engine.base_url,
        "SAFEHOLD_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    run_in(client, image, name, "echo first > /data/a.txt")
    (backup,) = json.loads(ok(run_cli("backup", "--volume", name, "--json", env=env)).stdout)
    run_in(client, image, name, "echo second > /data/a.txt")

    ok(run_cli("restore", "--volume", f"{name}:latest", env=env))

    assert run_in(client, image, name, "cat /data/a.txt") == b"first\n"
    listed = json.loads(ok(run_cli("list", "--json", env=env)).stdout)
    kinds = {row["name"]: (row["kind"], row["target"]) for row in listed}
    (safety,) = [n for n, (kind, _) in kinds.items() if kind == "safety"]
    assert safety.startswith(f"safety_volume_{name}_") and kinds[safety] == ("safety", name)
    assert kinds[backup["artifact"]] == ("volume", name)
    assert links(repo) == {f"volume_{name}_latest.tar.gz": backup["artifact"]}
    shown = ok(run_cli("list", env=env)).stdout
    assert safety in shown and "safety" in shown.split(safety, 1)[1].splitlines()[0]

    status = json.loads(run_cli("status", "--json", env=env).stdout)
    targets = {(t["kind"], t["target"]): t for t in status["targets"]}
    assert {kind for kind, _ in targets} <= {"database", "volume"}  # never "safety"
    assert targets[("volume", name)]["last_backup"] == backup["artifact"]
    assert targets[("volume", name)]["good_backups"] == 1
    assert not [t for t in status["targets"] if t["kind"] == "safety"]

    drilled = json.loads(ok(run_cli("drill", "--latest", "--json", env=env)).stdout)
    assert [m["artifact"] for m in drilled["members"]] == [backup["artifact"]]
    copied = json.loads(
        ok(run_cli("copy", "--latest", "--to", "offsite", "--json", env=env)).stdout
    )
    assert copied[0]["copied"] == [backup["artifact"]]
    remote = s3.storage(bucket, "h")
    assert remote.exists(backup["artifact"]) and not remote.exists(safety)

    # prune with keep-last 1: the backup is the representative, the fresh safety copy stays.
    pruned = run_cli(
        "prune",
        "--json",
        env={
            **env,
            **{f"SAFEHOLD_RETENTION_{k}": "0" for k in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")},
        },
    )
    decisions = {b["name"]: b for b in json.loads(ok(pruned).stdout)[0]["backups"]}
    assert decisions[backup["artifact"]]["reasons"][0] == "newest good backup"
    assert decisions[safety]["keep"] and decisions[safety]["reasons"][0].startswith("safety copy")
    assert repo.exists(safety)

    # Named explicitly, a safety copy restores like any volume backup.
    ok(run_cli("restore", "--volume", f"{name}:{safety}", "--no-safety-backup", env=env))
    assert run_in(client, image, name, "cat /data/a.txt") == b"second\n"


def _safety_copy(repo: LocalStorage, folder: Path, when: datetime, target: str) -> Manifest:
    """A safety copy as a volume restore writes it, with a stamp in the past."""
    name = naming.safety_artifact(volume_artifact(target, when, "gzip"))
    with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
        written = write_tree_backup(
            folder_source(folder), target, repo, name, when, "gzip", null_sink
        )
        manifest = dataclasses.replace(written, kind="safety")
        commit(repo, manifest, null_sink, "")
    return manifest


def _volume_backup(repo: LocalStorage, folder: Path, when: datetime, target: str) -> Manifest:
    name = volume_artifact(target, when, "gzip")
    with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
        manifest = write_tree_backup(
            folder_source(folder), target, repo, name, when, "gzip", null_sink
        )
        commit(repo, manifest, null_sink, "")
    return manifest


def test_safety_copies_go_after_safety_days_unless_pinned(
    repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "f.txt").write_text("content\n")
    backup = _volume_backup(repo, folder, at(40), "app")
    old = _safety_copy(repo, folder, at(10), "app")
    fresh = _safety_copy(repo, folder, at(2), "app")
    pinned = _safety_copy(repo, folder, at(30), "app")
    newer = _safety_copy(repo, folder, at(1), "app")  # newer than the backup: still not latest
    pin(repo, pinned.artifact)
    assert links(repo) == {"volume_app_latest.tar.gz": backup.artifact}
    assert catalog.resolve(repo, "latest", "volume", "app").name == backup.artifact

    planned = prune(repo, keep_one(safety_days=7), now=NOW, dry_run=True)
    assert planned.removed == [old.artifact]

    result = prune(repo, keep_one(safety_days=7), now=NOW)

    reasons = {d.candidate.name: d.reasons for d in result.decisions}
    assert result.removed == [old.artifact]
    assert reasons[old.artifact] == ["remove: safety copy older than 7 days"]
    assert reasons[fresh.artifact] == [
        f"safety copy, kept until {at(2) + timedelta(days=7):%Y-%m-%d %H:%M} UTC"
    ]
    assert reasons[pinned.artifact] == ["pinned"]
    assert reasons[backup.artifact] == ["newest good backup", "keep-last 1"]
    assert not repo.exists(old.artifact) and not repo.exists(naming.manifest_key(old.artifact))
    assert (
        repo.exists(fresh.artifact) and repo.exists(pinned.artifact) and repo.exists(newer.artifact)
    )
    # A safety copy is never the only thing that stands between a target and "no backup".
    later = prune(repo, keep_one(safety_days=0), now=NOW)
    assert sorted(later.removed) == sorted([fresh.artifact, newer.artifact])
    assert links(repo) == {"volume_app_latest.tar.gz": backup.artifact}


# --- globals go with their dump -------------------------------------------------------------------


def test_retention_judges_globals_by_their_dump_and_never_safety_copies_by_gfs() -> None:
    def dump(name: str, days: float) -> Candidate:
        return Candidate(name, "database", "app", at(days))

    def globals_of(name: str, days: float, of: str | None, **kw: object) -> Candidate:
        return Candidate(name, "globals", "app", at(days), companion_of=of, **kw)  # type: ignore[arg-type]

    backups = [
        dump("d1", 3),
        globals_of("g1", 3, "d1"),
        dump("d2", 1),
        globals_of("g2", 1, "d2"),
        globals_of("g-orphan", 5, None),
        globals_of("g-foreign", 5, None, status="unverified/foreign"),
        globals_of("g-pinned", 6, "d1", pinned=True),
        Candidate("s1", "safety", "vol", at(8)),
        Candidate("s2", "safety", "vol", at(6)),
    ]
    decided = {d.candidate.name: (d.keep, d.reasons) for d in decide(backups, keep_one(), NOW)}
    assert decided["d1"] == (False, ["remove: outside every window"])
    assert decided["g1"] == (False, ["remove: its dump d1 is removed"])
    assert decided["d2"] == (True, ["newest good backup", "keep-last 1"])
    assert decided["g2"] == (True, ["globals of kept dump d2"])
    assert decided["g-orphan"] == (False, ["remove: no database dump it belongs to is left"])
    assert decided["g-foreign"][0] and decided["g-pinned"] == (True, ["pinned"])
    assert decided["s1"] == (False, ["remove: safety copy older than 7 days"])
    assert decided["s2"][0] and decided["s2"][1][0].startswith("safety copy, kept until")
    # Only safety copies of a target: removing them all is not "losing every backup".
    only_old = decide([Candidate("s", "safety", "vol", at(30))], keep_one(), NOW)
    assert [d.keep for d in only_old] == [False]
    with pytest.raises(UsageError, match="safety_days"):
        decide([], keep_one(safety_days=-1), NOW)


def test_prune_removes_a_dumps_globals_with_it(repo: LocalStorage, db: PgTarget) -> None:
    made = []
    for days in (5, 1):
        when = at(days)
        name = naming.database_artifact(when, "gzip")
        with repository_session(repo, lock_timeout=10, purpose="test", sink=null_sink):
            manifest = dump_database(db, repo, name, when, BackupOptions(), null_sink)
            commit(repo, manifest, null_sink, "")
        (globals_name,) = catalog.companions(manifest)  # written by the backup beside its dump
        assert repo.exists(globals_name)
        made.append((name, globals_name))
    orphan = naming.globals_artifact(naming.database_artifact(at(9), "gzip"))
    repo.put_bytes(orphan, b"-- left by a dump that is gone\n")
    catalog.write_manifest(repo, _globals_manifest(repo, orphan, at(9), db.dbname))
    (old_dump, old_globals), (new_dump, new_globals) = made

    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "safehold", "status", "--json"],
            env=seed_env(db, repo.root),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    )
    assert {t["kind"] for t in status["targets"]} == {"database"}
    assert status["targets"][0]["last_backup"] == new_dump

    events: list[Event] = []
    result = prune(repo, keep_one(), now=NOW, sink=events.append)

    assert sorted(result.removed) == sorted([old_dump, old_globals, orphan])
    kept = {d.candidate.name: d.reasons for d in result.decisions if d.keep}
    assert kept == {
        new_dump: ["newest good backup", "keep-last 1"],
        new_globals: [f"globals of kept dump {new_dump}"],
    }
    assert repo.exists(new_globals) and not repo.exists(old_globals) and not repo.exists(orphan)
    # The dump is removed before its globals (a crash in between leaves only an orphan).
    order = [e.data["artifact"] for e in events if e.message.startswith("removed ")]
    assert order.index(old_dump) < order.index(old_globals)


def _globals_manifest(repo: LocalStorage, name: str, when: datetime, database: str) -> Manifest:
    data = repo.read_bytes(name)
    return Manifest(
        artifact=name,
        kind="globals",
        target=database,
        compression="none",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        started_at=when,
        finished_at=when,
        tool_version="test",
    )


# --- the fixed names and cat -------------------------------------------------------------------


def test_fixed_names_follow_the_newest_backup_through_gzip_zstd_and_age(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    identity = tmp_path / "key.txt"
    public = ok(run_cli("keygen", "--output", str(identity))).stdout.strip()
    reader = {"SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(identity)}
    modes = {
        "gzip": {},
        "zstd": {"SAFEHOLD_COMPRESS": "zstd"},
        "age": {"SAFEHOLD_COMPRESS": "zstd", "SAFEHOLD_ENCRYPTION_RECIPIENTS": public},
    }
    made: dict[str, str] = {}
    contents = {}
    for mode, env in modes.items():
        execute(db, f"INSERT INTO public.audit_log (action) VALUES ('before the {mode} backup')")
        contents[mode] = fingerprint(db)
        made[mode] = json.loads(ok(run_cli("backup", "--json", env=env)).stdout)["artifact"]
        seed = dict.fromkeys(naming.DB_LATEST_LINKS, made[mode])
        if mode == "gzip":
            assert links(repo) == seed
        elif mode == "zstd":
            assert links(repo) == {**seed, "db_backup_latest.sql.zst": made[mode]}
        else:
            assert links(repo) == {**seed, "db_backup_latest.sql.zst.age": made[mode]}
    assert made["age"].endswith(".sql.zst.age")

    # The seed's restore restores the newest backup, encrypted and zstd as it is.
    execute(db, "INSERT INTO public.audit_log (action) VALUES ('after every backup')")
    restored = subprocess.run(
        [
            str(ROOT / "scripts" / "restore.sh"),
            "--database",
            "./backups/db_backup_latest.sql",
            "--drop-previous",
        ],
        env={**seed_env(db, repo.root), **reader},
        cwd=repo.root.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    ok(restored)
    assert fingerprint(db) == contents["age"]

    # cat gives each one's pg_dump archive: the very bytes pg_dump wrote.
    plain = {
        "gzip": repo.path(made["gzip"]).read_bytes(),
        "zstd": _zstd_d(repo.path(made["zstd"]).read_bytes()),
        "age": _zstd_d(
            pyrage.decrypt(
                repo.path(made["age"]).read_bytes(),
                [pyrage.x25519.Identity.from_str(_secret(identity))],
            )
        ),
    }
    for mode, name in made.items():
        out = cat(db, repo, name, env=reader)
        assert out.returncode == 0, out.stderr
        assert out.stdout == plain[mode], mode
    expected_toc = toc(_pg_restore_list(plain["age"]))
    for ref in ("latest", "db_backup_latest.sql", "latest_db_backup.sql"):
        listing = piped(db, repo, f"safehold cat {ref} | pg_restore --list", reader)
        assert listing.returncode == 0, listing.stderr
        assert toc(listing.stdout) == expected_toc
        assert "TABLE DATA public audit_log" in listing.stdout
    no_key = cat(db, repo, "latest")
    assert no_key.returncode != 0 and no_key.stdout == b""
    assert b"no key is configured" in no_key.stderr


def test_cat_of_a_volume_backup_is_its_plain_tar(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(3_000_000))
    gz = json.loads(ok(run_cli("backup", "--path", str(folder), "--json")).stdout)[0]["artifact"]
    zst = json.loads(
        ok(
            run_cli("backup", "--path", str(folder), "--json", env={"SAFEHOLD_COMPRESS": "zstd"})
        ).stdout
    )[0]["artifact"]
    assert links(repo) == {
        "volume_uploads_latest.tar.gz": zst,
        "volume_uploads_latest.tar.zst": zst,
    }
    expected = subprocess.run(
        ["tar", "-tzvf", str(repo.path(gz))], capture_output=True, text=True, check=True
    ).stdout
    for ref in ("latest", gz, zst, "volume_uploads_latest.tar.gz"):
        listing = piped(db, repo, f"safehold cat --volume uploads {ref} | tar -tv", {})
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout == expected
    raw = cat(db, repo, gz)
    assert (
        raw.stdout
        == subprocess.run(
            ["gzip", "-dc", str(repo.path(gz))], capture_output=True, check=True
        ).stdout
    )
    wrong = cat(db, repo, "--volume", "other", gz)
    assert wrong.returncode == 2 and b"not a backup of volume other" in wrong.stderr


def test_a_tampered_backup_makes_cat_fail_and_never_finishes_the_stream(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    execute(
        db,
        "INSERT INTO public.audit_log (action) SELECT repeat(md5(g::text), 2) "
        "FROM generate_series(1, 100000) g",
    )
    uncompressed = {"SAFEHOLD_COMPRESS": "none"}  # a big dump from a small table
    name = json.loads(ok(run_cli("backup", "--json", env=uncompressed)).stdout)["artifact"]
    path = repo.path(name)
    good = path.read_bytes()
    assert len(good) > 3 << 20  # more than what cat holds back
    assert cat(db, repo, "latest").stdout == good
    middle = len(good) // 2
    path.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])

    out = cat(db, repo, "latest")

    assert out.returncode == 6, out.stderr
    assert b"damaged" in out.stderr and b"sha256" in out.stderr
    assert len(out.stdout) < len(good) and good.startswith(out.stdout[:middle])
    listing = piped(db, repo, "safehold cat latest | pg_restore --list", {})
    assert listing.returncode != 0

    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(4_000_000))
    archive = json.loads(ok(run_cli("backup", "--path", str(folder), "--json")).stdout)[0]
    data = repo.path(archive["artifact"]).read_bytes()
    cut = len(data) - 100  # damage near the end: the decompressor reads on, the check fails
    repo.path(archive["artifact"]).write_bytes(
        data[:cut] + bytes([data[cut] ^ 1]) + data[cut + 1 :]
    )
    tarred = piped(db, repo, "safehold cat --volume uploads latest | tar -t", {})
    assert tarred.returncode != 0 and "damaged" in tarred.stderr


def _zstd_d(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout


def _secret(identity: Path) -> str:
    return next(ln for ln in identity.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY"))


def _pg_restore_list(archive: bytes) -> str:
    done = subprocess.run(["pg_restore", "--list"], input=archive, capture_output=True, check=True)
    return done.stdout.decode()
