"""A database restore killed at any point leaves the live database old or new, open (issue 12).

The real command (``safehold restore --database latest``, a zstd backup so a decompressed temp
file exists too) is SIGKILLed when its log shows each step and at random moments; before the
next command, a closed live database must be journalled; after it (``safehold list``), it must
have said what it did, and the live database holds exactly the old or the new content, accepts
connections, and no staging database, temp file or journal entry is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from safehold import naming
from safehold.errors import StorageFull
from safehold.operations import journal
from safehold.operations.checks.doctor.run import DoctorSetup, run_checks
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.database.recovery import CLOSED_KIND, PREVIOUS_KIND, STAGING_KIND
from safehold.sandbox import SandboxCluster
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import Fingerprint, execute, fingerprint, seed_env
from .crash_support import message, read_until
from .mounts import tmpfs
from .test_journal import as_written_by, dead_pid

STEPS = ("create staging database", "pg_restore --jobs", "swapping", "renamed", "dropping the")


def cli(db: PgTarget, repo: LocalStorage, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in seed_env(db, repo.root).items() if k != "TMPDIR"}
    return subprocess.Popen(
        [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def server_state(db: PgTarget) -> dict[str, bool]:
    """Every database named after ``db``: whether it accepts connections."""
    with connect(db, "postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s",
            (db.dbname + "%",),
        ).fetchall()
    return {str(name): bool(allowed) for name, allowed in rows}


def temp_files(repo: LocalStorage) -> list[str]:
    folder = repo.path(naming.TMP_DIR)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def kill_at(proc: subprocess.Popen[str], step: str, delay: float = 0.0) -> list[str]:
    """SIGKILL ``delay`` seconds after the log shows ``step``; the lines read."""
    lines, _ = read_until(proc, step)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()  # reaped: its pid is dead, as the next run's journal check needs
    return lines


def timed_log(proc: subprocess.Popen[str]) -> list[tuple[float, str]]:
    """Each log line with the seconds since the first one, to the end of the run."""
    assert proc.stderr is not None
    lines: list[tuple[float, str]] = []
    first = None
    while line := proc.stderr.readline():
        first = first if first is not None else time.monotonic()
        lines.append((time.monotonic() - first, message(line)))
    proc.communicate()
    return lines


def settle(db: PgTarget, repo: LocalStorage, old: Fingerprint, new: Fingerprint) -> str:
    """Check what a kill left, run the next command, check what it said and what is left."""
    pending = {e.kind for e in journal.entries(repo)}
    state = server_state(db)
    if not state.get(db.dbname, True) or not all(state.values()):
        assert CLOSED_KIND in pending, f"a closed database nobody will reopen: {state}"
    listing = cli(db, repo, "list")
    _out, err = listing.communicate(timeout=120)
    assert listing.returncode == 0, err
    said = [message(line) for line in err.splitlines() if "interrupted" in line]
    assert all(state is True for state in server_state(db).values()), server_state(db)
    assert not [n for n in server_state(db) if "_safehold_staging_" in n]
    # Asked with --drop-previous: the old database renamed aside by a committed swap is gone.
    assert not [n for n in server_state(db) if "_pre_restore_" in n], server_state(db)
    assert journal.entries(repo) == []
    assert temp_files(repo) == []
    now = fingerprint(db)
    assert now in (old, new), "the live database holds neither the old nor the new content"
    if STAGING_KIND in pending:
        assert any("the staging database" in s for s in said), said
    if CLOSED_KIND in pending:
        assert any("connections" in s and db.dbname in s for s in said), said
    if PREVIOUS_KIND in pending:
        assert any("the previous database" in s for s in said), said
    if not pending:
        assert said == []
    return "new" if now == new else "old"


def test_a_restore_killed_anywhere_leaves_live_old_or_new_and_open(
    db: PgTarget, repo: LocalStorage
) -> None:
    new = fingerprint(db)
    backup_database(db, repo, BackupOptions(compression="zstd"))
    outcomes: list[tuple[str, float, set[str], str]] = []
    proc = cli(db, repo, "restore", "--database", "latest", "--drop-previous")
    log = timed_log(proc)
    assert proc.returncode == 0, log
    at = {step: next(t for t, s in log if step in s) for step in STEPS}
    rng = random.Random(12)
    kills = [(step, 0.0) for step in STEPS]
    kills += [("verify", rng.uniform(0, log[-1][0]))]  # anywhere
    swap = at["renamed"] - at["swapping"]
    kills += [("swapping", rng.uniform(0, swap)) for _ in range(3)]  # inside the swap
    for run, (step, delay) in enumerate(kills):
        execute(db, f"INSERT INTO public.audit_log (action) VALUES ('before kill {run}')")
        old = fingerprint(db)
        proc = cli(db, repo, "restore", "--database", "latest", "--drop-previous")
        seen = kill_at(proc, step, delay)
        assert any(step in s for s in seen), (step, seen)  # the step was reached
        pending = {e.kind for e in journal.entries(repo)}
        outcomes.append((step, delay, pending, settle(db, repo, old, new)))
    # The steps before the swap leave the old content; the journal had something to do.
    assert [o for _, _, _, o in outcomes[:2]] == ["old", "old"], outcomes
    assert all(STAGING_KIND in p for _, _, p, _ in outcomes[:2]), outcomes
    assert any(o == "new" for _, _, _, o in outcomes), outcomes


def test_a_second_restore_of_the_same_database_is_refused_while_the_first_runs(
    db: PgTarget, repo: LocalStorage
) -> None:
    """Two operators restore one database at once: the second is refused before it touches
    anything, and the first, held mid-way (SIGSTOP while its pg_restore loads staging), then
    finishes: the live database holds the backup, and nothing of either run is left."""
    new = fingerprint(db)
    backup_database(db, repo, BackupOptions(compression="zstd"))
    execute(db, "INSERT INTO public.audit_log (action) VALUES ('after the backup')")
    old = fingerprint(db)
    first = cli(db, repo, "restore", "--database", "latest", "--drop-previous")
    assert first.stderr is not None
    seen: list[str] = []
    while line := first.stderr.readline():
        seen.append(message(line))
        if "pg_restore --jobs" in seen[-1]:
            break
    assert any("pg_restore --jobs" in s for s in seen), seen
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = cli(db, repo, "restore", "--database", "latest", "--drop-previous")
        _out, err = second.communicate(timeout=120)
        assert second.returncode != 0, err
        assert f"another restore of '{db.dbname}' is running" in err, err
        assert fingerprint(db) == old  # the first has not swapped; the second changed nothing
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert fingerprint(db) == new
    assert list(server_state(db)) == [db.dbname]  # no staging, no previous database left
    assert journal.entries(repo) == []
    assert temp_files(repo) == []


def test_the_next_run_reopens_a_closed_database_and_drops_staging(
    db: PgTarget, repo: LocalStorage
) -> None:
    """The states a kill inside the swap leaves, made exactly: live closed before the renames,
    and (an older safehold's swap) renamed with the old database still closed."""
    old = fingerprint(db)
    staging, previous = f"{db.dbname}_safehold_staging_x", f"{db.dbname}_pre_restore_x"
    server = {"host": db.host, "port": db.port, "session": "safehold-restore-gone"}
    execute(db, f"CREATE DATABASE {staging}", "postgres")
    execute(db, f"ALTER DATABASE {db.dbname} ALLOW_CONNECTIONS false", "postgres")
    pid, started = dead_pid()
    for kind, data in (
        (STAGING_KIND, {**server, "database": db.dbname, "staging": staging}),
        (CLOSED_KIND, {**server, "live": db.dbname, "previous": previous, "staging": staging}),
    ):
        entry = journal.record(repo, kind, data, "safehold restore")
        as_written_by(repo, entry, pid=pid, started=started)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(
            host=db.host, port=db.port, user=db.user, password=db.password, dbname=db.dbname
        )

    listing = cli(db, repo, "list")
    _out, err = listing.communicate(timeout=120)
    said = [message(line) for line in err.splitlines() if "interrupted" in line]

    assert any(f"dropped the staging database '{staging}'" in s for s in said), said
    assert any(f"allowed connections again on '{db.dbname}'" in s and "had not happened" in s
               for s in said), said  # fmt: skip
    assert server_state(db) == {db.dbname: True}
    assert fingerprint(db) == old
    assert journal.entries(repo) == []

    # Swapped, old database closed under its new name: it is opened, live is left as it is.
    execute(db, f"ALTER DATABASE {db.dbname} RENAME TO {previous}", "postgres")
    execute(db, f"CREATE DATABASE {db.dbname}", "postgres")
    execute(db, f"ALTER DATABASE {previous} ALLOW_CONNECTIONS false", "postgres")
    closed = {**server, "live": db.dbname, "previous": previous, "staging": staging}
    entry = journal.record(repo, CLOSED_KIND, closed, "safehold restore")
    as_written_by(repo, entry, pid=pid, started=started)
    _out, err = cli(db, repo, "list").communicate(timeout=120)
    assert f"allowed connections again on '{previous}'" in err and "had committed" in err, err
    assert server_state(db) == {db.dbname: True, previous: True}
    assert fingerprint(db, previous) == old


def test_the_next_run_drops_the_previous_database_a_killed_drop_previous_left(
    db: PgTarget, repo: LocalStorage
) -> None:
    """Killed after the swap committed, before --drop-previous dropped the old database: the
    next run drops it as asked, and leaves the restored live database alone."""
    live = fingerprint(db)
    previous = f"{db.dbname}_pre_restore_x"
    execute(db, f"CREATE DATABASE {previous} TEMPLATE {db.dbname}", "postgres")
    pid, started = dead_pid()
    data = {"host": db.host, "port": db.port, "live": db.dbname, "previous": previous,
            "session": "safehold-restore-gone"}  # fmt: skip
    entry = journal.record(repo, PREVIOUS_KIND, data, "safehold restore")
    as_written_by(repo, entry, pid=pid, started=started)

    _out, err = cli(db, repo, "list").communicate(timeout=120)

    assert f"dropped the previous database '{previous}'" in err, err
    assert server_state(db) == {db.dbname: True}
    assert fingerprint(db) == live
    assert journal.entries(repo) == []


def test_doctor_says_what_the_next_run_will_do(db: PgTarget, repo: LocalStorage) -> None:
    pid, started = dead_pid()
    staging = f"{db.dbname}_safehold_staging_y"
    data = {"host": db.host, "port": db.port, "database": db.dbname, "staging": staging}
    entry = journal.record(repo, STAGING_KIND, data, "safehold restore")
    as_written_by(repo, entry, pid=pid, started=started)
    checks = run_checks(DoctorSetup(target=db, backup_dir=repo.root))
    (check,) = [c for c in checks if c.check == "interrupted runs"]
    assert check.result == "WARN"
    assert f"the next command will drop the staging database '{staging}'" in check.detail
    journal.done(repo, entry)
    (check,) = [c for c in run_checks(DoctorSetup(db, repo.root)) if c.check == "interrupted runs"]
    assert check.result == "OK"


def test_a_backup_of_another_database_is_refused_over_live_unless_forced(
    db: PgTarget, repo: LocalStorage, pg: SandboxCluster
) -> None:
    other = pg.target.with_db(db.dbname + "_other")
    execute(pg.target, f"CREATE DATABASE {other.dbname} TEMPLATE {db.dbname}", "postgres")
    execute(other, "DELETE FROM app.files")
    foreign = backup_database(other, repo).artifact
    live = fingerprint(db)

    refused = cli(db, repo, "restore", "--database", foreign)
    _out, err = refused.communicate(timeout=120)
    assert refused.returncode != 0
    assert f"is a backup of database '{other.dbname}', not of '{db.dbname}'" in err, err
    assert "--force" in err and "--target-db" in err
    assert fingerprint(db) == live

    forced = cli(db, repo, "restore", "--database", foreign, "--force", "--drop-previous")
    _out, err = forced.communicate(timeout=120)
    assert forced.returncode == 0, err
    assert fingerprint(db) == fingerprint(other)


def test_disk_full_while_decompressing_is_a_storage_error_and_live_is_untouched(
    db: PgTarget, repo: LocalStorage
) -> None:
    execute(
        db,
        "CREATE TABLE app.big AS SELECT g, repeat(md5(g::text), 40) AS t "
        "FROM generate_series(1, 8000) g",
    )  # fmt: skip  (10 MB, compresses well)
    backup_database(db, repo, BackupOptions(compression="zstd"))
    execute(db, "DELETE FROM app.big WHERE g % 2 = 0")
    live = fingerprint(db)
    scratch = repo.path(naming.TMP_DIR)
    with tmpfs(scratch, "4m"):
        proc = cli(db, repo, "restore", "--database", "latest")
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == StorageFull.exit_code, err
        logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        text = err + " ".join(str(e.get("hint", "")) for e in logged)
        assert "unexpected" not in text.lower(), err
        assert f"no space left on the device holding {scratch}" in err, err
        assert "decompressed copy of" in err and "TMPDIR" in err, err
        assert list(Path(scratch).iterdir()) == []
    assert fingerprint(db) == live
    assert server_state(db) == {db.dbname: True}
    assert journal.entries(repo) == []
