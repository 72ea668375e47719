"""Chunked backups and restores from snapshots under kill -9 and SIGTERM, through the command.

The real ``python -m safehold`` is killed: a folder backup once its first pack is uploaded, a
database backup while pg_dump streams, and a restore from a snapshot while the snapshot is
exported as the seed's files (before anything is restored). Then the next commands run: no
snapshot of the killed backup is listed, the store verifies (packs no index names are leftovers
for prune), no pg_dump outlives its parent, no dump without a manifest shows in the repository,
and the next backup or restore gives back exactly the source.

Points that pass in milliseconds are hit by freezing the run (SIGSTOP) the moment they are
reached, then sending the signal (and SIGCONT: a stopped process hears SIGTERM once it runs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safehold import naming
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage
from safehold.storage.local import PARTIAL_MARK

from .conftest import CliRunner, databases, execute, fingerprint, seed_env
from .crash_support import message, read_until
from .test_encryption import keygen
from .tree_support import MiB, snapshot

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
# About 60 MB of dump, far more than the pipe to the store holds: pg_dump is mid-table long
# after its run is frozen (it streams the whole table in a fraction of a second otherwise).
BULK = (
    "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) || "
    "md5((g * 7)::text) || md5((g * 11)::text) || md5((g * 13)::text) || md5((g * 17)::text) "
    "|| md5((g * 19)::text) AS body FROM generate_series(1, 260000) g"
)

Popen = subprocess.Popen[str]


def _keys(run_cli: CliRunner, tmp_path: Path) -> dict[str, str]:
    identity = tmp_path / "identity.txt"
    public = keygen(run_cli, identity)
    return {
        "SAFEHOLD_FORMAT": "chunked",
        "SAFEHOLD_ENCRYPTION_RECIPIENTS": public,
        "SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(identity),
    }


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _start(db: PgTarget, repo: LocalStorage, env: dict[str, str], *args: str) -> Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
        env={**seed_env(db, repo.root), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo.root.parent,
    )


def _kill_when(proc: Popen, ready: Callable[[], bool], sig: signal.Signals, what: str) -> list[str]:
    """Send ``sig`` the moment ``ready()`` (polled every millisecond); the messages logged."""
    deadline = time.monotonic() + 60
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"the run never reached {what}"
        time.sleep(0.001)
    proc.send_signal(sig)
    return _reap(proc)


def _reap(proc: Popen) -> list[str]:
    _out, err = proc.communicate(timeout=60)
    return [message(line) for line in err.splitlines()]


def _packs(repo: LocalStorage) -> set[str]:
    """The packs stored whole (a partial upload's name starts with a dot)."""
    return {p.name for p in repo.path("chunks/packs").glob("*/*") if not p.name.startswith(".")}


def _partials(folder: Path, *, deep: bool = False) -> list[str]:
    found = folder.rglob("*") if deep else folder.iterdir()
    return sorted(p.name for p in found if PARTIAL_MARK in p.name)


def _killed_run(run_cli: CliRunner, env: dict[str, str], command: str) -> dict[str, Any]:
    """The run record of the killed command (the first of its command)."""
    runs = _json(run_cli("list", "--runs", "--json", env=env))
    return next(r for r in reversed(runs) if r["command"] == command)


def _says_interrupted(sig: signal.Signals, record: dict[str, Any], said: list[str]) -> None:
    if sig == signal.SIGTERM:  # the run heard it, cleaned up and recorded the interruption
        assert record["outcome"] == "interrupted", record
        assert any("interrupt" in s.lower() for s in said), said
    else:  # kill -9: the record still says running, of a pid that is gone
        assert record["outcome"] == "running", record
        assert not Path(f"/proc/{record['pid']}").exists()


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 MB of random files (nine packs and more), made once for the module."""
    root = tmp_path_factory.mktemp("big") / "user-data"
    for number in range(30):
        folder = root / f"d{number % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number:02d}.bin").write_bytes(os.urandom(5 * MiB))
    (root / "note.txt").write_text("small\n")
    return root


@SIGNALS
def test_a_killed_folder_backup_leaves_no_snapshot_and_the_next_one_restores(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    tmp_path: Path,
    big_tree: Path,
    sig: signal.Signals,
) -> None:
    env = _keys(run_cli, tmp_path)
    proc = _start(db, repo, env, "backup", "--path", str(big_tree))
    said = _kill_when(proc, lambda: bool(_packs(repo)), sig, "its first pack")
    left = _packs(repo)
    _says_interrupted(sig, _killed_run(run_cli, env, "backup"), said)

    assert _json(run_cli("snapshots", "list", "--json", env=env)) == []
    report = _json(run_cli("snapshots", "verify", "--json", env=env))
    assert report["ok"] and report["errors"] == [] and report["snapshots"] == 0, report
    if sig == signal.SIGKILL:  # what was uploaded stays, as leftovers the next prune removes
        assert left and set(report["unindexed_packs"]) == left, report
    else:  # the run heard it: it deleted the packs it had sent and its unfinished uploads
        assert left == set() and report["unindexed_packs"] == [], report
        assert _partials(repo.path("chunks"), deep=True) == []

    made = _json(run_cli("backup", "--path", str(big_tree), "--json", env=env))
    assert [m["target"] for m in made] == ["volume:user-data"]
    snap = made[0]["snapshot"]
    listed = _json(run_cli("snapshots", "list", "--json", env=env))
    assert [(s["snapshot"], s["target"]) for s in listed] == [(snap, "volume:user-data")]
    report = _json(run_cli("snapshots", "verify", "--json", env=env))
    assert report["ok"] and report["snapshots"] == 1, report
    dest = tmp_path / "restored"
    restored = _json(run_cli("snapshots", "restore", snap, "--to", str(dest), "--json", env=env))
    assert restored["snapshot"] == snap
    assert snapshot(dest, exact=True) == snapshot(big_tree, exact=True)


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return text[text.index("(") + 1 : text.rindex(")")], fields[0], int(fields[1])


def _pg_dumps(parent: int) -> list[int]:
    """The running dumps (pg_dump --snapshot=...) whose parent is ``parent``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            name, state, ppid = stat
            if name == "pg_dump" and ppid == parent and state != "Z" and _dumping(entry.path):
                found.append(int(entry.name))
    return found


def _dumping(proc_dir: str) -> bool:
    """Whether the process is a dump (not the ``pg_dump --version`` asked before)."""
    try:
        return b"--snapshot=" in Path(proc_dir, "cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] == "pg_dump" and stat[1] != "Z"


def _sessions(db: PgTarget) -> list[str]:
    """What the server sessions on ``db`` (the run's and its pg_dump's) run last."""
    with connect(db, "postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend'",
            (db.dbname,),
        ).fetchall()
    return [str(row[0]) for row in rows]


def _until(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _freeze_mid_dump(proc: Popen, db: PgTarget) -> int:
    """Stop the run (SIGSTOP) the moment its pg_dump starts, then wait until pg_dump copies the
    big table and blocks on the full pipe: killed now, the run dies with pg_dump mid-stream."""
    dumps: list[int] = []
    deadline = time.monotonic() + 60
    while not (dumps := _pg_dumps(proc.pid)):
        assert proc.poll() is None, f"the backup ended before pg_dump started: {proc.communicate()}"
        assert time.monotonic() < deadline, "pg_dump never started"
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    (pg_dump,) = dumps
    # Mid-stream: copying a table (the sample's own come before public.bulk, and under load
    # the pipe may fill during one of them) and blocked on the full pipe.
    assert _until(lambda: any(q.startswith("COPY ") for q in _sessions(db)), 30.0)
    assert _until(lambda: _running(pg_dump) and "pipe_write" in _wchan(pg_dump), 30.0)
    return pg_dump


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


@SIGNALS
def test_a_killed_database_backup_leaves_no_snapshot_and_no_pg_dump(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path, sig: signal.Signals
) -> None:
    env = _keys(run_cli, tmp_path)
    execute(db, BULK)
    proc = _start(db, repo, env, "backup")
    pg_dump = _freeze_mid_dump(proc, db)
    proc.send_signal(sig)
    os.kill(proc.pid, signal.SIGCONT)  # a stopped process hears SIGTERM once it runs again
    said = _reap(proc)
    assert _until(lambda: not _running(pg_dump)), f"pg_dump outlived its run: {_proc_stat(pg_dump)}"
    assert _until(lambda: _sessions(db) == []), f"sessions outlived the run: {_sessions(db)}"
    _says_interrupted(sig, _killed_run(run_cli, env, "backup"), said)

    assert _json(run_cli("snapshots", "list", "--json", env=env)) == []
    report = _json(run_cli("snapshots", "verify", "--json", env=env))
    assert report["ok"] and report["snapshots"] == 0, report
    taken = fingerprint(db)
    made = _json(run_cli("backup", "--json", env=env))
    assert [m["target"] for m in made] == [f"database:{db.dbname}"]
    listed = _json(run_cli("snapshots", "list", "--json", env=env))
    assert [s["snapshot"] for s in listed] == [made[0]["snapshot"]]
    report = _json(run_cli("snapshots", "verify", "--read-data", "100", "--json", env=env))
    assert report["ok"] and report["snapshots"] == 1 and report["blobs_checked"] > 0, report
    assert fingerprint(db) == taken


def _seed_files(repo: LocalStorage) -> list[str]:
    """The seed files visible in BACKUP_DIR (what ``list`` shows; unfinished ones are hidden)."""
    return sorted(p.name for p in repo.root.iterdir() if p.name.startswith(("db_", "volume_")))


def _writing(repo: LocalStorage) -> bool:
    """Whether the export's dump is being written: its unfinished file holds 4 MB or more."""
    return any(
        p.name.startswith(".db_backup_") and PARTIAL_MARK in p.name and p.stat().st_size >= 4 * MiB
        for p in repo.root.iterdir()
    )


def _stop_when_renamed(proc: Popen, repo: LocalStorage) -> str:
    """SIGSTOP the run the moment its dump is renamed into place (polled without a pause): its
    globals and manifests are written after, with an fsync each. The dump's name."""
    deadline = time.monotonic() + 60
    while not (names := _seed_files(repo)):
        assert proc.poll() is None, f"the restore ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, "the dump was never renamed into place"
    os.kill(proc.pid, signal.SIGSTOP)
    (dump,) = names
    return dump


def _kill_exporting(proc: Popen, repo: LocalStorage, point: str, sig: signal.Signals) -> list[str]:
    if point == "started":
        said, seen = read_until(proc, "exporting snapshot")
        assert seen, said
        proc.send_signal(sig)
        return said + _reap(proc)
    if point == "writing":
        return _kill_when(proc, lambda: _writing(repo), sig, "the dump being written")
    dump = _stop_when_renamed(proc, repo)
    # The stop landed inside the export's commit: the dump is in place, its manifest is not.
    assert not repo.exists(naming.manifest_key(dump)), "stopped too late: the export committed"
    proc.send_signal(sig)
    os.kill(proc.pid, signal.SIGCONT)
    return _reap(proc)


@SIGNALS
def test_a_restore_killed_while_exporting_its_snapshot_leaves_no_dump_and_runs_again(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path, sig: signal.Signals
) -> None:
    env = _keys(run_cli, tmp_path)
    execute(db, BULK)
    (made,) = _json(run_cli("backup", "--json", env=env))
    snap, taken = made["snapshot"], fingerprint(db)
    new = f"{db.dbname}_new"
    restore = ("restore", "--database", snap, "--target-db", new)
    for point in ("started", "writing", "renamed"):
        proc = _start(db, repo, env, *restore)
        said = _kill_exporting(proc, repo, point, sig)
        assert not any("pg_restore" in s or "staging" in s for s in said), said
        assert new not in databases(db), "the restore step was reached"
        if sig == signal.SIGTERM:  # the run removed what it had written itself
            assert (_partials(repo.root), _seed_files(repo)) == ([], []), point
        listing = run_cli("list", "--json", env=env)
        rows = _json(listing)
        assert [(r["name"], r["status"]) for r in rows] == [(snap, "ok")], (point, rows)
        assert _seed_files(repo) == [], point  # (unfinished files are hidden; removed later)
        if point == "renamed" and sig == signal.SIGKILL:  # the dump was in place: list said so
            assert "unfinished export of snapshot" in listing.stderr, listing.stderr

    done = run_cli(*restore, env=env)
    assert done.returncode == 0, done.stderr
    assert fingerprint(db, new) == taken
    rows = _json(run_cli("list", "--json", env=env))
    assert {r["status"] for r in rows} == {"ok"}, rows
    assert [r["kind"] for r in rows if r["name"].startswith("db_")] == ["database", "globals"]
    assert _partials(repo.root) == []
